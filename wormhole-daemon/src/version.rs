//! `wormhole version`: what this binary is: its version, the commit it was built from
//! (`build.rs`), the target, and the features and WireGuard backends compiled in.

use serde::Serialize;

/// The commit this binary was built from (`build.rs`: `GIT_COMMIT`, else `git rev-parse HEAD`,
/// else `unknown`).
pub const COMMIT: &str = env!("WORMHOLE_COMMIT");

/// `--version`'s long form.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WORMHOLE_COMMIT"),
    ")"
);

/// What `wormhole version` prints.
#[derive(Debug, Serialize)]
pub struct BuildInfo {
    pub version: &'static str,
    pub commit: &'static str,
    /// The target triple.
    pub target: &'static str,
    /// Cargo features of wormhole-daemon compiled in.
    pub features: Vec<&'static str>,
    /// `--backend` values this binary can run (besides `auto`).
    pub backends: Vec<&'static str>,
}

impl BuildInfo {
    /// This binary's.
    pub fn current() -> Self {
        let embedded = cfg!(feature = "embedded");
        BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            commit: COMMIT,
            target: env!("WORMHOLE_TARGET"),
            features: [("embedded", embedded)]
                .into_iter()
                .filter_map(|(name, on)| on.then_some(name))
                .collect(),
            // The kernel module and wireguard-go are driven from outside the process: always
            // there; the embedded one is compiled in.
            backends: [
                ("kernel", true),
                ("userspace", true),
                ("embedded", embedded),
            ]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect(),
        }
    }

    /// The text form.
    pub fn text(&self) -> String {
        let list = |items: &[&str]| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        format!(
            "wormhole {}\ncommit:   {}\ntarget:   {}\nfeatures: {}\nbackends: {}\n",
            self.version,
            self.commit,
            self.target,
            list(&self.features),
            list(&self.backends)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_commit_features_and_backends() {
        let info = BuildInfo::current();
        let text = info.text();
        assert!(text.starts_with(&format!("wormhole {}\n", env!("CARGO_PKG_VERSION"))));
        assert!(text.contains(&format!("\ncommit:   {COMMIT}\n")), "{text}");
        assert!(
            COMMIT == "unknown"
                || (COMMIT.len() >= 7 && COMMIT.bytes().all(|b| b.is_ascii_hexdigit())),
            "{COMMIT:?}"
        );
        assert!(text.contains("\nbackends: kernel, userspace"), "{text}");
        assert_eq!(
            text.contains("\nfeatures: embedded\n"),
            cfg!(feature = "embedded"),
            "{text}"
        );
        assert_eq!(
            info.backends.contains(&"embedded"),
            cfg!(feature = "embedded")
        );
        assert!(info.target.contains("linux"), "{text}");
        assert!(LONG_VERSION.contains(COMMIT));
    }
}
