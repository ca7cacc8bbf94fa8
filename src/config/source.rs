//! Where a config came from: its text, kept to place problems at file:line:col by their
//! key path (`tls.domains[0].cert`).

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::Config;
use crate::error::{ConfigError, ConfigErrors, Invalid};

/// The text a config was read from, kept to place errors at line:column.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    /// Reads a config file.
    pub fn read(path: &Path) -> Result<Source, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                position: None,
                key: String::new(),
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        Ok(Source {
            path: path.to_path_buf(),
            text,
        })
    }

    /// The directory relative paths in this config are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::new(),
        }
    }

    /// Places problems (named by key path) at their line:column in this file.
    pub fn place(&self, problems: Vec<Invalid>) -> ConfigErrors {
        let doc = toml_edit::Document::parse(self.text.as_str()).ok();
        ConfigErrors(
            problems
                .into_iter()
                .map(|p| {
                    let span = doc.as_ref().and_then(|d| locate(d.as_table(), &p.key));
                    self.error_at(span, p.key, p.message)
                })
                .collect(),
        )
    }

    fn error_at(&self, span: Option<Range<usize>>, key: String, message: String) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            position: span.map(|s| line_col(&self.text, s.start)),
            key,
            message,
        }
    }

    /// Parses and validates (files named in the config are checked later, by their loaders).
    pub fn parse(&self) -> Result<Config, ConfigErrors> {
        let de = toml::de::Deserializer::parse(&self.text).map_err(|e| {
            ConfigErrors(vec![self.error_at(
                e.span(),
                String::new(),
                e.message().to_string(),
            )])
        })?;
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let key = if key == "." { String::new() } else { key };
            ConfigErrors(vec![self.error_at(
                inner.span(),
                key,
                inner.message().to_string(),
            )])
        })?;
        let problems = cfg.validate(&self.base_dir());
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(self.place(problems))
        }
    }
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<(Config, Source), ConfigErrors> {
    let source = Source::read(path)?;
    let cfg = source.parse()?;
    Ok((cfg, source))
}

/// A place in a parsed document while walking a key path.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a toml_edit::Table),
    Value(&'a toml_edit::Value),
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(i) => i.span(),
            Node::Table(t) => t.span(),
            Node::Value(v) => v.span(),
        }
    }

    /// The child under `name`, with the span of its key.
    fn child(self, name: &str) -> Option<(Option<Range<usize>>, Node<'a>)> {
        let table = match self {
            Node::Item(toml_edit::Item::Table(t)) | Node::Table(t) => t,
            Node::Item(toml_edit::Item::Value(toml_edit::Value::InlineTable(t)))
            | Node::Value(toml_edit::Value::InlineTable(t)) => {
                let (k, v) = t.get_key_value(name)?;
                return Some((k.span(), Node::Item(v)));
            }
            _ => return None,
        };
        let (k, v) = table.get_key_value(name)?;
        Some((k.span(), Node::Item(v)))
    }

    fn index(self, i: usize) -> Option<Node<'a>> {
        match self {
            Node::Item(toml_edit::Item::ArrayOfTables(a)) => a.get(i).map(Node::Table),
            Node::Item(toml_edit::Item::Value(toml_edit::Value::Array(a)))
            | Node::Value(toml_edit::Value::Array(a)) => a.get(i).map(Node::Value),
            _ => None,
        }
    }
}

/// The span of a key path (`a.b[2].c`) in a parsed document: the value's, else the
/// nearest key's found on the way.
fn locate(root: &toml_edit::Table, path: &str) -> Option<Range<usize>> {
    let mut node = Node::Table(root);
    let mut best = None;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let (name, indexes) = seg.split_at(seg.find('[').unwrap_or(seg.len()));
        let Some((key_span, child)) = node.child(name) else {
            return best;
        };
        best = key_span.or(best);
        node = child;
        for idx in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            match idx.parse().ok().and_then(|i| node.index(i)) {
                Some(n) => {
                    best = n.span().or(best);
                    node = n;
                }
                None => return best,
            }
        }
    }
    node.span().or(best)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
