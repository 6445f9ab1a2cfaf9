//! `${env:NAME}`, `${env:NAME:-default}` and `${file:PATH}` substitution in
//! config text. `${file:PATH}` is the file's content without its trailing
//! line break: the way to pass secrets mounted as files (Kubernetes,
//! Docker secrets).
//!
//! Substitution happens on the raw text before YAML parsing, as in the
//! OpenTelemetry Collector, so it works in any position. `$$` writes a literal `$`.

/// A reference that could not be substituted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error(
        "line {line}: environment variable `{name}` is not set (write `${{env:{name}:-default}}` to give a default)"
    )]
    /// A variable without a default is not set.
    Unset {
        /// The variable.
        name: String,
        /// Line of the reference, from 1.
        line: usize,
    },
    #[error("line {line}: `${{` without a closing `}}`")]
    /// A reference is not closed.
    Unclosed {
        /// Line of the reference, from 1.
        line: usize,
    },
    #[error(
        "line {line}: `${{{inner}}}` is not a supported reference: expected `${{env:NAME}}`, `${{env:NAME:-default}}` or `${{file:PATH}}`"
    )]
    /// A reference other than `env:NAME`.
    Unsupported {
        /// What stood between the braces.
        inner: String,
        /// Line of the reference, from 1.
        line: usize,
    },
    #[error("line {line}: cannot read `{path}` for `${{file:{path}}}`: {error}")]
    /// A `${file:PATH}` that cannot be read.
    File {
        /// The path.
        path: String,
        /// Why (the I/O error; never the content).
        error: String,
        /// Line of the reference, from 1.
        line: usize,
    },
}

/// Replaces every `${env:...}` in `text`, looking names up with `lookup`.
pub fn substitute(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    substitute_recording(text, lookup, &mut Vec::new())
}

/// As [`substitute`], and pushes onto `from_outside` every value that came
/// from the environment or a file (not the `:-default`s, which are written
/// in the config itself): the values a secret may take.
pub fn substitute_recording(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
    from_outside: &mut Vec<String>,
) -> Result<String, EnvError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let line = text[..text.len() - rest.len() + pos].matches('\n').count() + 1;
        let end = body.find('}').ok_or(EnvError::Unclosed { line })?;
        let inner = &body[..end];
        if let Some(path) = inner.strip_prefix("file:") {
            let content = std::fs::read_to_string(path).map_err(|e| EnvError::File {
                path: path.to_string(),
                error: e.to_string(),
                line,
            })?;
            let content = content
                .strip_suffix('\n')
                .unwrap_or(&content)
                .trim_end_matches('\r');
            out.push_str(content);
            from_outside.push(content.to_string());
            rest = &body[end + 1..];
            continue;
        }
        let Some(reference) = inner.strip_prefix("env:") else {
            return Err(EnvError::Unsupported {
                inner: inner.to_string(),
                line,
            });
        };
        let (name, default) = match reference.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        let valid_name = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return Err(EnvError::Unsupported {
                inner: inner.to_string(),
                line,
            });
        }
        match (lookup(name), default) {
            (Some(value), _) => {
                out.push_str(&value);
                from_outside.push(value);
            }
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(EnvError::Unset {
                    name: name.to_string(),
                    line,
                });
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "KEY").then(|| "s3cr3t".to_string())
    }

    #[test]
    fn a_file_reference_is_the_file_without_its_line_break() {
        let path = std::env::temp_dir().join(format!("doraflow-secret-{}", std::process::id()));
        std::fs::write(&path, "t0ken\n").unwrap();
        let text = format!("a: \"${{file:{}}}\"", path.display());
        assert_eq!(substitute(&text, lookup).unwrap(), "a: \"t0ken\"");
        std::fs::remove_file(&path).unwrap();
        let err = substitute("a: ${file:/nonexistent/doraflow}", lookup).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("line 1: cannot read `/nonexistent/doraflow`"),
            "{err}"
        );
    }

    #[test]
    fn substitutes_set_variables_and_defaults() {
        let text = "a: ${env:KEY}\nb: ${env:MISSING:-127.0.0.1:4317}\nc: x${env:KEY}y";
        assert_eq!(
            substitute(text, lookup).unwrap(),
            "a: s3cr3t\nb: 127.0.0.1:4317\nc: xs3cr3ty"
        );
    }

    #[test]
    fn empty_default_is_allowed() {
        assert_eq!(substitute("a: '${env:NOPE:-}'", lookup).unwrap(), "a: ''");
    }

    #[test]
    fn dollar_escapes_and_plain_dollars_pass_through() {
        assert_eq!(
            substitute("a: $${env:KEY} costs $5", lookup).unwrap(),
            "a: ${env:KEY} costs $5"
        );
    }

    #[test]
    fn unset_variable_names_it_and_its_line() {
        assert_eq!(
            substitute("a: 1\nb: ${env:NOPE}", lookup),
            Err(EnvError::Unset {
                name: "NOPE".into(),
                line: 2
            })
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(matches!(
            substitute("a: ${env:KEY", lookup),
            Err(EnvError::Unclosed { line: 1 })
        ));
        assert!(matches!(
            substitute("a: ${vault:/x}", lookup),
            Err(EnvError::Unsupported { .. })
        ));
        assert!(matches!(
            substitute("a: ${env:BAD NAME}", lookup),
            Err(EnvError::Unsupported { .. })
        ));
    }
}
