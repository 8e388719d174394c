//! `wormhole manifests`: every rendered variant passes `kubernetes-validate --strict` (the
//! Kubernetes 1.32 schemas, every unknown field refused) with the Namespace first, and a
//! kustomization of it renders with `kubectl kustomize`, as `scripts/release.sh` ships it. `scripts/test.sh` installs kubernetes-validate (PyPI, in a
//! virtualenv it names with `KUBERNETES_VALIDATE`) and kubectl.

use std::path::Path;
use std::process::Command;

use crate::harness::{BIN, root_or_skip};

/// kubernetes-validate: `KUBERNETES_VALIDATE`, else on `PATH`.
fn validator() -> String {
    std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into())
}

/// `wormhole manifests ARGS`, which must succeed.
fn render(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("manifests")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wormhole manifests {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `program args...` in `dir`: its stdout, panicking with everything it said if it fails.
fn run(dir: &Path, program: &str, args: &[&str], hint: &str) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} ({hint})"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn every_rendered_variant_validates_strictly_and_kustomizes() {
    // Root: the condition under which scripts/test.sh (and CI) has installed the tools.
    if !root_or_skip("every_rendered_variant_validates_strictly_and_kustomizes") {
        return;
    }
    let image = format!("registry.example.com/wormhole@{DIGEST}");
    let variants: Vec<Vec<&str>> = vec![
        vec!["--image", "wormhole:0.1.0"],
        vec!["--image", &image, "--arch", "arm64"],
        vec![
            "--image",
            &image,
            "--psk",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--external-cidr",
            "10.98.0.0/24",
            "--backend",
            "userspace",
            "--metrics-allow",
            "10.0.0.0/8",
        ],
        vec!["--uninstall", "--image", &image],
        vec!["--uninstall", "--remove-keys", "--image", &image],
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, args) in variants.iter().enumerate() {
        let file = format!("variant-{i}.yaml");
        std::fs::write(dir.path().join(&file), render(args)).unwrap();
        let said = run(
            dir.path(),
            &validator(),
            &["--strict", "--kubernetes-version", "1.32.0", &file],
            "scripts/test.sh installs kubernetes-validate from PyPI and sets KUBERNETES_VALIDATE",
        );
        // Every document was checked against a schema (none skipped as unknown).
        assert!(
            !said.contains("WARN") && !said.to_lowercase().contains("skip"),
            "{args:?}: {said}"
        );
        // The Namespace comes first: `kubectl apply -f` creates in file order.
        let text = std::fs::read_to_string(dir.path().join(&file)).unwrap();
        let first_kind = text.lines().find_map(|l| l.strip_prefix("kind: ")).unwrap();
        assert_eq!(first_kind, "Namespace", "{args:?}");
    }
    // The monitoring pack's kinds are the Prometheus Operator's (no schema in
    // kubernetes-validate: wormhole-agent's tests check them against the operator's CRDs);
    // here, that the variant renders and that the rest of it validates.
    let monitoring = render(&["--monitoring", "--image", &image]);
    let core: Vec<&str> = monitoring
        .split("\n---\n")
        .filter(|doc| {
            !doc.contains("\nkind: PodMonitor") && !doc.contains("\nkind: PrometheusRule")
        })
        .collect();
    assert_eq!(core.len() + 2, monitoring.split("\n---\n").count());
    std::fs::write(dir.path().join("monitoring.yaml"), core.join("\n---\n")).unwrap();
    run(
        dir.path(),
        &validator(),
        &[
            "--strict",
            "--kubernetes-version",
            "1.32.0",
            "monitoring.yaml",
        ],
        "kubernetes-validate",
    );

    // The release's kustomize base, and an overlay on it, as a user would write one.
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    std::fs::write(base.join("wormhole.yaml"), render(&["--image", &image])).unwrap();
    std::fs::write(
        base.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - wormhole.yaml\n",
    )
    .unwrap();
    let overlay = dir.path().join("overlay");
    std::fs::create_dir(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../base\n\
         commonLabels:\n  team: network\n",
    )
    .unwrap();
    let rendered = run(
        &overlay,
        "kubectl",
        &["kustomize", "."],
        "apt-get install kubernetes-client",
    );
    assert!(rendered.contains(&image), "{rendered}");
    assert!(rendered.contains("team: network"), "{rendered}");
    std::fs::write(dir.path().join("kustomized.yaml"), &rendered).unwrap();
    run(
        dir.path(),
        &validator(),
        &[
            "--strict",
            "--kubernetes-version",
            "1.32.0",
            "kustomized.yaml",
        ],
        "kubernetes-validate",
    );
}

#[test]
fn bad_values_are_a_usage_error_naming_the_flag() {
    let out = Command::new(BIN)
        .args(["manifests", "--image", "wormhole:1\nkind: Secret"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--image") && err.contains("give the image reference"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
