//! The Query protocol's parameters: `Name=value` pairs from the query string
//! and a form-encoded body, with EC2's conventions for lists (`Name.N`),
//! structures (`Name.N.Member`), filters (`Filter.N.Name`,
//! `Filter.N.Value.M`), paging (`MaxResults`, `NextToken`) and tags
//! (`TagSpecification.N.ResourceType`, `…Tag.M.Key`).

use std::collections::BTreeMap;
use std::str::FromStr;

use evnet_model::{Kind, Tags};

use super::error::{Ec2Error, Ec2Result};

/// Every parameter of one request (a later duplicate wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub BTreeMap<String, String>);

impl Params {
    /// Parses `a=1&b=2` (query string or form body).
    pub fn parse_into(&mut self, encoded: &[u8]) {
        for (k, v) in form_urlencoded::parse(encoded) {
            self.0.insert(k.into_owned(), v.into_owned());
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A required parameter.
    pub fn req(&self, name: &str) -> Ec2Result<&str> {
        match self.get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Ec2Error::missing(name)),
        }
    }

    pub fn parse<T: FromStr>(&self, name: &str) -> Ec2Result<Option<T>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| Ec2Error::invalid_value(format!("Value ({v}) for parameter {name} is invalid"))),
        }
    }

    pub fn bool(&self, name: &str) -> Ec2Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(Ec2Error::invalid_value(format!("Value ({v}) for parameter {name} is invalid: expected true or false"))),
        }
    }

    /// The values of `Name.1`, `Name.2`, … in index order.
    pub fn list(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}.");
        let mut v: Vec<(u32, String)> = self
            .0
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, v)| k[prefix.len()..].parse::<u32>().ok().map(|i| (i, v.clone())))
            .collect();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter().map(|(_, v)| v).collect()
    }

    /// The structures `Name.N.…`, each as its own `Params` (keys without the
    /// `Name.N.` prefix), in index order.
    pub fn structs(&self, name: &str) -> Vec<Params> {
        let prefix = format!("{name}.");
        let mut by_index: BTreeMap<u32, Params> = BTreeMap::new();
        for (k, v) in self.0.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)) {
            let rest = &k[prefix.len()..];
            if let Some((i, member)) = rest.split_once('.')
                && let Ok(i) = i.parse::<u32>() {
                    by_index.entry(i).or_default().0.insert(member.to_string(), v.clone());
                }
        }
        by_index.into_values().collect()
    }

    /// `DryRun=true`.
    pub fn dry_run(&self) -> Ec2Result<bool> {
        Ok(self.bool("DryRun")?.unwrap_or(false))
    }

    /// The ids listed as `Name.N`, each checked to be of `kind`.
    pub fn ids(&self, name: &str, kind: Kind) -> Ec2Result<Vec<String>> {
        let ids = self.list(name);
        for id in &ids {
            if Kind::of_id(id) != Some(kind) {
                return Err(Ec2Error::not_found(kind, id));
            }
        }
        Ok(ids)
    }

    /// One id parameter, required, of `kind`.
    pub fn id(&self, name: &str, kind: Kind) -> Ec2Result<String> {
        let id = self.req(name)?;
        if Kind::of_id(id) != Some(kind) {
            return Err(Ec2Error::not_found(kind, id));
        }
        Ok(id.to_string())
    }

    /// `Filter.N.Name` with its `Filter.N.Value.M`.
    pub fn filters(&self) -> Ec2Result<Vec<Filter>> {
        let mut out = vec![];
        for f in self.structs("Filter") {
            let name = f.get("Name").filter(|n| !n.is_empty()).ok_or_else(|| Ec2Error::missing("Filter.N.Name"))?.to_string();
            let values = f.list("Value");
            if values.is_empty() {
                return Err(Ec2Error::invalid_value(format!("The filter '{name}' needs at least one value (Filter.N.Value.1)")));
            }
            out.push(Filter { name, values });
        }
        Ok(out)
    }

    /// `MaxResults` (5 to 1000, as EC2 allows) and `NextToken`.
    pub fn paging(&self) -> Ec2Result<Paging> {
        let max = self.parse::<i64>("MaxResults")?;
        if let Some(m) = max
            && !(5..=1000).contains(&m) {
                return Err(Ec2Error::invalid_value(format!("Value ({m}) for parameter MaxResults is invalid: it must be between 5 and 1000")));
            }
        Ok(Paging { max: max.map(|m| m as usize), next_token: self.get("NextToken").filter(|t| !t.is_empty()).map(str::to_string) })
    }

    /// The tags of `TagSpecification.N` whose `ResourceType` is `resource_type`.
    /// A specification for another type is refused, as EC2 does.
    pub fn tag_specs(&self, resource_type: &str) -> Ec2Result<Tags> {
        let mut tags = Tags::new();
        for spec in self.structs("TagSpecification") {
            let rt = spec.get("ResourceType").unwrap_or("");
            if rt != resource_type {
                return Err(Ec2Error::invalid_value(format!("'{rt}' is not a valid taggable resource type for this operation; use '{resource_type}'")));
            }
            for t in spec.structs("Tag") {
                let k = t.get("Key").ok_or_else(|| Ec2Error::missing("TagSpecification.N.Tag.M.Key"))?;
                tags.insert(k.to_string(), t.get("Value").unwrap_or("").to_string());
            }
        }
        Ok(tags)
    }
}

impl Params {
    /// The tags of every `TagSpecification.N`, by resource type; each type
    /// must be one of `allowed`.
    pub fn tag_specs_any(&self, allowed: &[&str]) -> Ec2Result<BTreeMap<String, Tags>> {
        let mut out: BTreeMap<String, Tags> = BTreeMap::new();
        for spec in self.structs("TagSpecification") {
            let rt = spec.get("ResourceType").unwrap_or("");
            if !allowed.contains(&rt) {
                return Err(Ec2Error::invalid_value(format!(
                    "'{rt}' is not a valid taggable resource type for this operation; use {}",
                    allowed.join(" or ")
                )));
            }
            let tags = out.entry(rt.to_string()).or_default();
            for t in spec.structs("Tag") {
                let k = t.get("Key").ok_or_else(|| Ec2Error::missing("TagSpecification.N.Tag.M.Key"))?;
                tags.insert(k.to_string(), t.get("Value").unwrap_or("").to_string());
            }
        }
        Ok(out)
    }
}

/// One `Filter.N`: the resource matches when any of its values for `name`
/// matches any of `values` (`*` and `?` are wildcards, as in EC2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Filter {
    pub fn matches(&self, have: &[String]) -> bool {
        self.values.iter().any(|want| have.iter().any(|h| wildcard(want, h)))
    }
}

/// EC2's filter wildcards: `*` any run, `?` one character, `\` escapes.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ti, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && p[pi] == '\\' && pi + 1 < p.len() && p[pi + 1] == t[ti] {
            pi += 2;
            ti += 1;
        } else if pi < p.len() && (p[pi] == '?' || (p[pi] == t[ti] && p[pi] != '*' && p[pi] != '\\')) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paging {
    pub max: Option<usize>,
    pub next_token: Option<String>,
}

/// What a filter sees of a resource: the values of one (known) filter name.
pub type FilterValues<'a, T> = &'a dyn Fn(&T, &str) -> Vec<String>;

/// Whether `name` is one of `known` or a tag filter.
pub fn known_filter(known: &[&str], name: &str) -> bool {
    known.contains(&name) || name.starts_with("tag:") || name == "tag-key" || name == "tag-value"
}

/// The values `tag:KEY`, `tag-key` and `tag-value` filters see.
pub fn tag_filter(tags: &Tags, name: &str) -> Vec<String> {
    if let Some(k) = name.strip_prefix("tag:") {
        return tags.get(k).cloned().into_iter().collect();
    }
    match name {
        "tag-key" => tags.keys().cloned().collect(),
        "tag-value" => tags.values().cloned().collect(),
        _ => vec![],
    }
}

/// Selects, filters and pages resources in id order: `ids` (when given) must
/// all exist and be the caller's; each filter must be one of `known`.
/// Answers the page and the next token.
pub fn select<T: Clone>(
    all: impl Iterator<Item = (String, T)>,
    kind: Kind,
    ids: &[String],
    filters: &[Filter],
    paging: &Paging,
    known: &[&str],
    values: FilterValues<'_, T>,
) -> Ec2Result<(Vec<T>, Option<String>)> {
    for f in filters {
        if !known_filter(known, &f.name) {
            return Err(Ec2Error::invalid_value(format!("The filter '{}' is invalid", f.name)));
        }
    }
    let mut items: Vec<(String, T)> = all.collect();
    if !ids.is_empty() {
        for id in ids {
            if !items.iter().any(|(i, _)| i == id) {
                return Err(Ec2Error::not_found(kind, id));
            }
        }
        items.retain(|(i, _)| ids.contains(i));
    }
    items.retain(|(_, v)| filters.iter().all(|f| f.matches(&values(v, &f.name))));
    if let Some(t) = &paging.next_token {
        if Kind::of_id(t) != Some(kind) {
            return Err(Ec2Error::invalid_value(format!("The token '{t}' is invalid")));
        }
        items.retain(|(i, _)| i.as_str() > t.as_str());
    }
    let mut next = None;
    if let Some(m) = paging.max
        && items.len() > m {
            items.truncate(m);
            next = items.last().map(|(i, _)| i.clone());
        }
    Ok((items.into_iter().map(|(_, v)| v).collect(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Params {
        let mut p = Params::default();
        p.parse_into(q.as_bytes());
        p
    }

    #[test]
    fn lists_and_structures_follow_their_indexes() {
        let p = params("SubnetId.2=b&SubnetId.10=c&SubnetId.1=a&Filter.1.Name=vpc-id&Filter.1.Value.1=vpc-1&Filter.1.Value.2=vpc-2&Filter.2.Name=tag%3AName&Filter.2.Value.1=web*");
        assert_eq!(p.list("SubnetId"), vec!["a", "b", "c"]);
        let f = p.filters().unwrap();
        assert_eq!(f[0], Filter { name: "vpc-id".into(), values: vec!["vpc-1".into(), "vpc-2".into()] });
        assert_eq!(f[1].name, "tag:Name");
        assert!(f[1].matches(&["web-1".into()]));
        assert!(!f[1].matches(&["db-1".into()]));
    }

    #[test]
    fn wildcards_match_as_ec2s_do() {
        assert!(wildcard("*", ""));
        assert!(wildcard("a*c", "abbbc"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "abbc"));
        assert!(wildcard("a\\*", "a*"));
        assert!(!wildcard("a\\*", "ab"));
        assert!(wildcard("10.0.*", "10.0.1.0/24"));
    }

    #[test]
    fn tag_specifications_must_name_the_resource_type() {
        let p = params("TagSpecification.1.ResourceType=vpc&TagSpecification.1.Tag.1.Key=Name&TagSpecification.1.Tag.1.Value=prod");
        assert_eq!(p.tag_specs("vpc").unwrap().get("Name").map(String::as_str), Some("prod"));
        assert_eq!(p.tag_specs("subnet").unwrap_err().code, "InvalidParameterValue");
    }

    #[test]
    fn paging_bounds_are_ec2s() {
        assert_eq!(params("MaxResults=4").paging().unwrap_err().code, "InvalidParameterValue");
        assert_eq!(params("MaxResults=5").paging().unwrap().max, Some(5));
    }
}
