//! `wormhole preflight`: what this node needs for `wormhole run` with the same options, each
//! check `ok`, `warning` or `error` with the fix, as a table or JSON; exit code 4 when one
//! failed.

use clap::Args;
use serde::Serialize;
use wormhole_agent::{Level, PreflightReport};
use wormhole_core::escape;

use crate::cli::{Output, RunArgs};

/// `wormhole preflight`: the options of `wormhole run` (the same flags, environment and
/// config file), and the output format.
#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// The agent's options.
    #[command(flatten)]
    pub run: RunArgs,
}

/// What `-o json` prints.
#[derive(Debug, Serialize)]
pub struct Json<'a> {
    pub node: &'a str,
    #[serde(flatten)]
    pub report: &'a PreflightReport,
}

/// The table: one row per check, the fix under each that is not ok, a summary line. Every
/// string in it is escaped.
pub fn table(node: &str, report: &PreflightReport) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| escape(&c.check).len())
        .max()
        .unwrap_or(0)
        .max("CHECK".len());
    let mut out = format!("preflight of node {}\n\n", escape(node));
    out += &format!("{:<width$}  {:<7}  DETAIL\n", "CHECK", "RESULT");
    for c in &report.checks {
        out += &format!(
            "{:<width$}  {:<7}  {}\n",
            escape(&c.check),
            c.result.as_str(),
            escape(&c.detail)
        );
        if let Some(fix) = c.fix.as_deref().filter(|_| c.result != Level::Ok) {
            out += &format!("{:<width$}  {:<7}  fix: {}\n", "", "", escape(fix));
        }
    }
    out += &format!("\n{}\n", report.summary());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wormhole_agent::Check;

    #[test]
    fn the_table_shows_each_check_and_the_fix_of_each_problem_escaped() {
        let report = PreflightReport {
            checks: vec![
                Check {
                    check: "pod-cidr".into(),
                    result: Level::Ok,
                    detail: "10.99.1.0/24 (in use)".into(),
                    fix: None,
                },
                Check {
                    check: "cni-config".into(),
                    result: Level::Error,
                    detail: "0\u{1b}[2J.conf sorts first".into(),
                    fix: Some("delete it".into()),
                },
            ],
            foreign_cni_configs: vec!["0\u{1b}[2J.conf".into()],
        };
        let text = table("n1", &report);
        assert_eq!(
            text,
            "preflight of node n1\n\n\
             CHECK       RESULT   DETAIL\n\
             pod-cidr    ok       10.99.1.0/24 (in use)\n\
             cni-config  error    0\\u{1b}[2J.conf sorts first\n\
             \x20                    fix: delete it\n\
             \n1 ok, 0 warning(s), 1 error(s)\n"
        );
        let json = serde_json::to_value(Json {
            node: "n1",
            report: &report,
        })
        .unwrap();
        assert_eq!(json["node"], "n1");
        assert_eq!(json["checks"][1]["result"], "error");
        assert_eq!(json["foreign_cni_configs"][0], "0\u{1b}[2J.conf");
    }
}
