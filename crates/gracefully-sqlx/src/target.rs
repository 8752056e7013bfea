//! Connection targets: which URLs a pool accepts, and how a target is shown in messages
//! (never with its password).
//!
//! sqlx reads URLs leniently: a PostgreSQL URL is parsed whatever its scheme (a `sqlite:`
//! URL handed to a PostgreSQL pool connects to the server it names), and SQLite takes any
//! string without `sqlite:` as a file name (a PostgreSQL URL handed to a SQLite pool would
//! become a file path, password included). So the scheme is checked first, here. Nor do we
//! show a target through sqlx's `ConnectOptions::to_url_lossy`: in sqlx 0.9 it panics for
//! valid options (`sqlite::memory:`, file names with `:`, Unix sockets), and sqlx never
//! calls it while connecting. A target is shown as the user wrote it (redacted), or, for
//! options built in code, described by the backend from its fields.

use crate::backend::sealed::Sealed;

/// The schemes of the databases sqlx has drivers for: a string starting with one of them is
/// a URL for that database, never a SQLite file name.
const DATABASE_SCHEMES: &[&str] = &[
    "postgres",
    "postgresql",
    "mysql",
    "mariadb",
    "sqlite",
    "mssql",
    "sqlserver",
];

/// The scheme of `url` (RFC 3986: a letter, then letters, digits, `+`, `-` or `.`, then
/// `:`), and what follows the `:`.
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

/// Why `url` is not for a `DB` pool, or `None` if it is (as far as its scheme tells).
///
/// A `DB` URL has one of `DB::SCHEMES` (any case). SQLite also takes a bare file name, as
/// sqlx does — unless the string is plainly a URL: another database's scheme, or any
/// `scheme://`.
pub(crate) fn wrong_scheme<DB: Sealed>(url: &str) -> Option<String> {
    let scheme = split_scheme(url);
    if let Some((name, _)) = scheme
        && DB::SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(name))
    {
        return None;
    }
    let found = match scheme {
        Some((name, rest))
            if !DB::FILE_NAMES
                || rest.starts_with("//")
                || DATABASE_SCHEMES
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(name)) =>
        {
            format!("a `{name}:` URL")
        }
        // SQLite: a file name, as sqlx reads it.
        _ if DB::FILE_NAMES => return None,
        _ => "no URL scheme".to_owned(),
    };
    let expected = DB::SCHEMES
        .iter()
        .map(|s| format!("`{s}:`"))
        .collect::<Vec<_>>()
        .join(" or ");
    Some(format!(
        "{found} for a {} pool; expected {expected} ({})",
        <DB as sqlx::Database>::NAME,
        DB::URL_EXAMPLES
    ))
}

/// `url` with any password replaced by `***`: the user-info password and `password=` query
/// parameters. A string that does not parse as a URL keeps only what cannot be a secret.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Cannot fail: a URL with a password has a host.
                let _ = parsed.set_password(Some("***"));
            }
            // `postgres:/user:password@host/db` (one slash) has no authority for the
            // parser, so the user part is in the path: masked up to its last `@`.
            if !parsed.has_host()
                && let Some(at) = parsed.path().rfind('@')
            {
                let path = format!("/***{}", &parsed.path()[at..]);
                parsed.set_path(&path);
            }
            if parsed.query().is_some() {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = k.eq_ignore_ascii_case("password")
                            || k.eq_ignore_ascii_case("sslpassword");
                        (
                            k.into_owned(),
                            if secret { "***".into() } else { v.into_owned() },
                        )
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        // Not a URL: keep what is before `://` and after the last `@`, and nothing of a
        // `password=` parameter.
        Err(_) => {
            let mut out = match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    format!("{}://***@{}", &url[..scheme], &url[at + 1..])
                }
                _ => url.to_owned(),
            };
            if let Some(start) = out.to_ascii_lowercase().find("password=") {
                let value = start + "password=".len();
                let end = out[value..].find('&').map_or(out.len(), |e| value + e);
                out.replace_range(value..end, "***");
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_user_info_password() {
        let shown = redact("postgres://alice:s3cret@db.example:5432/app");
        assert_eq!(shown, "postgres://alice:***@db.example:5432/app");
    }

    #[test]
    fn redact_hides_a_password_behind_a_single_slash() {
        let shown = redact("postgres:/alice:s3cret@db.example/app");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.ends_with("@db.example/app"), "{shown}");
    }

    #[test]
    fn redact_hides_a_password_parameter() {
        let shown = redact("postgres://db.example/app?user=alice&password=s3cret&sslmode=disable");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("password=***"), "{shown}");
        assert!(shown.contains("sslmode=disable"), "{shown}");
    }

    #[test]
    fn redact_keeps_urls_without_secrets() {
        assert_eq!(
            redact("postgres://alice@db.example/app"),
            "postgres://alice@db.example/app"
        );
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn redact_handles_strings_that_are_not_urls() {
        let shown = redact("postgres://alice:s3:cr@t@[bad/app");
        assert!(!shown.contains("s3"), "{shown}");
        let shown = redact("host=db password=s3cret");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn schemes_are_told_apart_from_file_names() {
        assert_eq!(wrong_scheme::<sqlx::Postgres>("postgres://h/db"), None);
        assert_eq!(
            wrong_scheme::<sqlx::Postgres>("PostgreSQL:///db?host=/s"),
            None
        );
        assert_eq!(wrong_scheme::<sqlx::Sqlite>("sqlite::memory:"), None);
        assert_eq!(wrong_scheme::<sqlx::Sqlite>("a:b.db"), None, "a file name");
        assert_eq!(
            wrong_scheme::<sqlx::Sqlite>("C:\\data\\x.db"),
            None,
            "a file name"
        );
        assert_eq!(wrong_scheme::<sqlx::Sqlite>("/tmp/x.db"), None);
        for (url, found) in [
            ("sqlite:test?host=h", "a `sqlite:` URL"),
            ("http://h/db", "a `http:` URL"),
            ("h:5432/db", "a `h:` URL"),
            ("localhost/db", "no URL scheme"),
        ] {
            let message = wrong_scheme::<sqlx::Postgres>(url).expect(url);
            assert!(message.starts_with(found), "{url}: {message}");
            assert!(
                message.contains("expected `postgres:` or `postgresql:`"),
                "{message}"
            );
        }
        for url in ["postgres:db", "mysql://h/db", "https://h/x.db", "MariaDB:x"] {
            let message = wrong_scheme::<sqlx::Sqlite>(url).expect(url);
            assert!(message.contains("expected `sqlite:`"), "{message}");
        }
    }

    proptest::proptest! {
        /// Whatever the string, checking, parsing and describing it returns; nothing panics.
        #[test]
        fn no_string_makes_parsing_or_describing_panic(url in ".{0,80}") {
            check_and_describe::<sqlx::Postgres>(&url);
            check_and_describe::<sqlx::Sqlite>(&url);
        }

        /// The same for strings that look like the URLs people write.
        #[test]
        fn no_url_shaped_string_makes_parsing_or_describing_panic(
            scheme in "(postgres|postgresql|sqlite|mysql|[a-z]{1,3})",
            slashes in "(//|/|)",
            user in "([a-z%:@]{0,6}@)?",
            host in "[a-z0-9.:%/\\[\\]]{0,12}",
            path in "(/[a-z0-9:%. ]{0,10}){0,2}",
            query in "(\\?[a-z_]{1,8}=[a-z0-9/:%]{0,8}(&[a-z_]{1,8}=[a-z0-9/%]{0,6})?)?",
        ) {
            let url = format!("{scheme}:{slashes}{user}{host}{path}{query}");
            check_and_describe::<sqlx::Postgres>(&url);
            check_and_describe::<sqlx::Sqlite>(&url);
        }
    }

    fn check_and_describe<DB: Sealed>(url: &str) {
        let _ = redact(url);
        if wrong_scheme::<DB>(url).is_none()
            && let Ok(options) = url.parse::<crate::backend::ConnectOptionsOf<DB>>()
        {
            let _ = redact(&DB::describe(&options));
        }
    }
}
