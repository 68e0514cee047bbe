//! Resources given by id or by name.
//!
//! A text that is a well-formed id of the expected kind is used as it is
//! (the server says whether it exists). Anything else is a name, looked up
//! with `?name=`: exactly one match is used, none or several is an error
//! that says what to do.

use evnet_client::Client;
use evnet_model::ids::Kind;

/// What a lookup by name found, for [`pick`].
pub(crate) fn pick(kind: Kind, text: &str, ids: Vec<String>) -> anyhow::Result<String> {
    match ids.len() {
        1 => Ok(ids.into_iter().next().unwrap_or_default()),
        0 => anyhow::bail!(
            "no {noun} is named `{text}` (give a name or an id like {example})",
            noun = kind.noun(),
            example = kind.make_id(0x1a2b3c4d5e6f7a8b),
        ),
        n => anyhow::bail!(
            "{n} {noun}s are named `{text}` ({list}): give the id instead",
            noun = kind.noun(),
            list = ids.join(", "),
        ),
    }
}

/// The id of the resource of `kind` that `text` names.
pub(crate) async fn id(client: &Client, kind: Kind, text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    if text.is_empty() {
        anyhow::bail!("an empty {} name or id", kind.noun());
    }
    if Kind::of_id(text) == Some(kind) {
        return Ok(text.to_string());
    }
    let ids = client.find_ids_by_name(kind, text).await?;
    pick(kind, text, ids)
}

/// Resolves several texts, keeping their order.
pub(crate) async fn ids(
    client: &Client,
    kind: Kind,
    texts: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(texts.len());
    for t in texts {
        out.push(id(client, kind, t).await?);
    }
    Ok(out)
}

/// Resolves an optional text.
pub(crate) async fn opt_id(
    client: &Client,
    kind: Kind,
    text: Option<&str>,
) -> anyhow::Result<Option<String>> {
    match text {
        Some(t) => Ok(Some(id(client, kind, t).await?)),
        None => Ok(None),
    }
}
