//! EC2's XML responses: a small tree of elements written with quick-xml
//! (which escapes text), in EC2's shape — `<{Action}Response xmlns=…>` with a
//! `<requestId>`, lowerCamel element names, lists as `<…Set><item>…</item>`.

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

/// The namespace of the 2016-11-15 API.
pub const NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// One element of a response.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `<name>text</name>`.
    Leaf(&'static str, String),
    /// `<name>children</name>`.
    Branch(&'static str, Vec<Node>),
}

pub fn leaf(name: &'static str, value: impl ToString) -> Node {
    Node::Leaf(name, value.to_string())
}

pub fn branch(name: &'static str, children: Vec<Node>) -> Node {
    Node::Branch(name, children)
}

/// `<name><item>…</item><item>…</item></name>`.
pub fn set<I: IntoIterator<Item = Vec<Node>>>(name: &'static str, items: I) -> Node {
    Node::Branch(name, items.into_iter().map(|children| Node::Branch("item", children)).collect())
}

/// `<name>value</name>` when there is a value.
pub fn opt(name: &'static str, value: Option<impl ToString>) -> Option<Node> {
    value.map(|v| leaf(name, v))
}

/// `<return>true</return>`, what actions without a result answer.
pub fn ok_return() -> Vec<Node> {
    vec![leaf("return", true)]
}

fn write(w: &mut Writer<Vec<u8>>, n: &Node) -> std::io::Result<()> {
    match n {
        Node::Leaf(name, text) => {
            w.write_event(Event::Start(BytesStart::new(*name)))?;
            w.write_event(Event::Text(BytesText::new(text)))?;
            w.write_event(Event::End(BytesEnd::new(*name)))?;
        }
        Node::Branch(name, children) => {
            w.write_event(Event::Start(BytesStart::new(*name)))?;
            for c in children {
                write(w, c)?;
            }
            w.write_event(Event::End(BytesEnd::new(*name)))?;
        }
    }
    Ok(())
}

/// The whole body of a successful answer to `action`.
pub fn response(action: &str, request_id: &str, body: &[Node]) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(1024));
    let root = format!("{action}Response");
    let r: std::io::Result<()> = (|| {
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        let mut start = BytesStart::new(root.as_str());
        start.push_attribute(("xmlns", NAMESPACE));
        w.write_event(Event::Start(start))?;
        write(&mut w, &leaf("requestId", request_id))?;
        for n in body {
            write(&mut w, n)?;
        }
        w.write_event(Event::End(BytesEnd::new(root.as_str())))?;
        Ok(())
    })();
    r.expect("writing XML into memory cannot fail");
    w.into_inner()
}

/// EC2's error body: `<Response><Errors><Error><Code>…</Code><Message>…`.
pub fn error(code: &str, message: &str, request_id: &str) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(256));
    let r: std::io::Result<()> = (|| {
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        let tree = branch(
            "Response",
            vec![
                branch("Errors", vec![branch("Error", vec![leaf("Code", code), leaf("Message", message)])]),
                leaf("RequestID", request_id),
            ],
        );
        write(&mut w, &tree)
    })();
    r.expect("writing XML into memory cannot fail");
    w.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_escape_text_and_wrap_lists_in_items() {
        let body = response("DescribeVpcs", "r-1", &[set("vpcSet", [vec![leaf("vpcId", "vpc-1"), leaf("cidrBlock", "a<b&c")]])]);
        let s = String::from_utf8(body).unwrap();
        assert!(s.contains(r#"<DescribeVpcsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">"#), "{s}");
        assert!(s.contains("<requestId>r-1</requestId><vpcSet><item><vpcId>vpc-1</vpcId><cidrBlock>a&lt;b&amp;c</cidrBlock></item></vpcSet>"), "{s}");
    }

    #[test]
    fn errors_have_ec2s_shape() {
        let s = String::from_utf8(error("InvalidVpcID.NotFound", "no <such> VPC", "r-2")).unwrap();
        assert!(s.ends_with("<Response><Errors><Error><Code>InvalidVpcID.NotFound</Code><Message>no &lt;such&gt; VPC</Message></Error></Errors><RequestID>r-2</RequestID></Response>"), "{s}");
    }
}
