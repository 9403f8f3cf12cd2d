// Embeds the git commit so `--version` can name the exact build, and links the binary
// with cold-text.ld (code the serving shim never runs, placed out of its way).
fn main() {
    // GNU ld and lld take a script with INSERT beside their default one; gold and mold do not.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let cold_text = std::path::Path::new(&manifest_dir).join("cold-text.ld");
    println!("cargo:rustc-link-arg-bin=containerd-shim-vm-v1=-Wl,-T,{}", cold_text.display());
    println!("cargo:rerun-if-changed=cold-text.ld");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SHIM_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
}
