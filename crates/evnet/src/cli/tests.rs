//! Tests of argument parsing, rendering and exec argument handling.
