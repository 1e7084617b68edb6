//! The configuration file (`--config FILE`, TOML): global settings at the top,
//! then one `[[service]]` table per service. This module reads and checks the
//! file's shape and turns settings into the long options they spell
//! (`max_children = 40` is `--max-children 40`), so the file and the command line
//! go through one parser; which kinds exist is the binary's business.
//!
//! Every error names the file, the line and the key at fault.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::addr::ListenAddr;

/// An error in a configuration file: where, which key, what.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One `[[service]]` table: its name, kind, addresses and every other key.
#[derive(Debug, Clone)]
pub struct ServiceTable {
    /// Position among the `[[service]]` tables (0-based).
    pub index: usize,
    pub name: String,
    pub kind: String,
    /// Empty: the kind's default addresses.
    pub listen: Vec<ListenAddr>,
    /// The other keys (model, limits, the kind's own options).
    pub options: toml::Table,
}

/// A parsed configuration file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    text: String,
    /// The top-level keys: settings for every service and for the server.
    pub global: toml::Table,
    pub services: Vec<ServiceTable>,
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        ConfigFile::parse(path, text)
    }

    /// Parses `text`, read from `path`.
    pub fn parse(path: &Path, text: String) -> Result<ConfigFile, ConfigError> {
        let mut table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let e: toml::de::Error = e;
                let line = e.span().map(|s| line_of(&text, s.start));
                return Err(ConfigError {
                    path: path.to_path_buf(),
                    line,
                    key: None,
                    message: e.message().to_string(),
                });
            }
        };
        let raw_services = table.remove("service");
        let mut file = ConfigFile {
            path: path.to_path_buf(),
            text,
            global: table,
            services: Vec::new(),
        };
        for (key, value) in &file.global {
            if key == "listen" {
                return Err(file.error(None, key, "listen belongs in a [[service]] table"));
            }
            if value.is_table() {
                return Err(file.error(None, key, "unknown table (services are [[service]])"));
            }
        }
        let raw_services = match raw_services {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a,
            Some(_) => {
                return Err(file.error(None, "service", "write each service as [[service]]"));
            }
        };
        for (index, raw) in raw_services.into_iter().enumerate() {
            let service = file.service_table(index, raw)?;
            if file.services.iter().any(|s| s.name == service.name) {
                return Err(file.error(Some(index), "name", "two services have this name"));
            }
            file.services.push(service);
        }
        if file.services.is_empty() {
            return Err(ConfigError {
                path: file.path.clone(),
                line: None,
                key: None,
                message: "no [[service]] table: nothing to run".into(),
            });
        }
        Ok(file)
    }

    fn service_table(&self, index: usize, raw: toml::Value) -> Result<ServiceTable, ConfigError> {
        let toml::Value::Table(mut options) = raw else {
            return Err(self.error(Some(index), "service", "expected a table"));
        };
        let mut string = |key: &str| match options.remove(key) {
            Some(toml::Value::String(s)) if !s.is_empty() => Ok(s),
            Some(_) => Err(self.error(Some(index), key, "expected a non-empty string")),
            None => Err(self.error(Some(index), key, "missing (every service needs one)")),
        };
        let name = string("name")?;
        let kind = string("kind")?;
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.error(Some(index), "name", "use letters, digits, '-' and '_' only"));
        }
        let listen = match options.remove("listen") {
            None => Vec::new(),
            Some(toml::Value::String(s)) => vec![self.addr(index, &s)?],
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => self.addr(index, s),
                    _ => Err(self.error(Some(index), "listen", "expected address strings")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(self.error(
                    Some(index),
                    "listen",
                    "expected an address or a list of addresses",
                ));
            }
        };
        for (key, value) in &options {
            if value.is_table() {
                return Err(self.error(Some(index), key, "a table is not an option"));
            }
        }
        Ok(ServiceTable {
            index,
            name,
            kind,
            listen,
            options,
        })
    }

    fn addr(&self, index: usize, s: &str) -> Result<ListenAddr, ConfigError> {
        s.parse()
            .map_err(|e: crate::addr::AddrError| self.error(Some(index), "listen", e.to_string()))
    }

    /// An error about `key` of service `service` (or of the top level), with the
    /// line the key is on.
    pub fn error(
        &self,
        service: Option<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            path: self.path.clone(),
            line: self.line_of_key(service, key),
            key: Some(match service {
                Some(i) => format!("service {} key '{key}'", i + 1),
                None => format!("key '{key}'"),
            }),
            message: message.into(),
        }
    }

    /// The line of `key` in the given `[[service]]` table (or at the top level).
    fn line_of_key(&self, service: Option<usize>, key: &str) -> Option<usize> {
        let mut current: Option<usize> = None;
        let mut seen = 0;
        let mut header_line = None;
        for (n, line) in self.text.lines().enumerate() {
            let t = line.trim_start();
            if t.starts_with("[[service]]") {
                current = Some(seen);
                seen += 1;
                if current == service {
                    header_line = Some(n + 1);
                }
                continue;
            }
            if t.starts_with('[') {
                current = None;
                continue;
            }
            if current == service
                && let Some(rest) = t.strip_prefix(key)
                && rest.trim_start().starts_with('=')
            {
                return Some(n + 1);
            }
        }
        header_line
    }

    /// The long options a table spells: `key = v` is `--key v` (with `_` as `-`),
    /// `true` is `--key`, `false` is nothing, a list repeats the option.
    pub fn options_as_args(
        &self,
        service: Option<usize>,
        table: &toml::Table,
    ) -> Result<Vec<String>, ConfigError> {
        let mut args = Vec::new();
        for (key, value) in table {
            let flag = format!("--{}", key.replace('_', "-"));
            let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
                match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    toml::Value::Float(f) => Ok(f.to_string()),
                    _ => Err(self.error(service, key, "expected a string or a number")),
                }
            };
            match value {
                toml::Value::Boolean(true) => args.push(flag),
                toml::Value::Boolean(false) => {}
                toml::Value::Array(items) => {
                    for item in items {
                        args.push(flag.clone());
                        args.push(scalar(item)?);
                    }
                }
                v => {
                    args.push(flag);
                    args.push(scalar(v)?);
                }
            }
        }
        Ok(args)
    }

    /// The text a service's behaviour depends on (everything but its limits):
    /// equal fingerprints across a reload mean the service is unchanged.
    pub fn fingerprint(&self, service: &ServiceTable, limits: &[&str]) -> String {
        let mut options = service.options.clone();
        for key in limits {
            options.remove(*key);
        }
        let global: toml::Table = self
            .global
            .iter()
            .filter(|(k, _)| !limits.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        format!(
            "{}|{}|{:?}|{}|{}",
            service.name, service.kind, service.listen, options, global
        )
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse(Path::new("t.toml"), text.to_string())
    }

    #[test]
    fn services_and_options() {
        let f = parse(
            "max_children = 10\n\n[[service]]\nname = \"e\"\nkind = \"echo\"\nlisten = [\"tcp:127.0.0.1:0\"]\nidle_timeout = 2.5\nverbose = true\n",
        )
        .unwrap();
        assert_eq!(f.services.len(), 1);
        assert_eq!(f.services[0].listen.len(), 1);
        let args = f.options_as_args(Some(0), &f.services[0].options).unwrap();
        assert_eq!(args, ["--idle-timeout", "2.5", "--verbose"]);
        let g = f.options_as_args(None, &f.global).unwrap();
        assert_eq!(g, ["--max-children", "10"]);
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse("[[service]]\nname = \"e\"\nkind = \"echo\"\nlisten = [\"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml:4: service 1 key 'listen': "), "{e}");
        let e = parse("[[service]]\nname = \"e\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:1: service 1 key 'kind': missing"),
            "{e}"
        );
        let e = parse("x = = 1\n").unwrap_err();
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn limits_do_not_change_the_fingerprint() {
        let a = parse("[[service]]\nname = \"e\"\nkind = \"echo\"\nmax_children = 1\n").unwrap();
        let b = parse("[[service]]\nname = \"e\"\nkind = \"echo\"\nmax_children = 9\n").unwrap();
        let c = parse("[[service]]\nname = \"e\"\nkind = \"time\"\n").unwrap();
        let lim = ["max_children"];
        assert_eq!(
            a.fingerprint(&a.services[0], &lim),
            b.fingerprint(&b.services[0], &lim)
        );
        assert_ne!(
            a.fingerprint(&a.services[0], &lim),
            c.fingerprint(&c.services[0], &lim)
        );
    }
}
