// Embeds the git commit so `--version` can name the exact build, and links the binary
// with cold-text.ld (code the serving shim never runs, placed out of its way).
fn main() {
    // GNU ld and lld take a script with INSERT beside their default one; gold and mold do not.
    // The linker reads a copy in OUT_DIR: cargo reuses this script's output for a checkout
    // at another path sharing the target directory, where a path into the source tree
    // would name a checkout that may be gone.
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let cold_text = std::path::Path::new(&out_dir).join("cold-text.ld");
    std::fs::copy("cold-text.ld", &cold_text).expect("copying cold-text.ld into OUT_DIR");
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
