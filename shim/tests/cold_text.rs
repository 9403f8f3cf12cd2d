//! cold-text.ld moves the code the serving shim never runs into `.text.cold`, by patterns on
//! mangled symbol names. A change of the compiler's mangling, or a module renamed, would
//! make them match nothing without a word (only the shim's resident memory would show it):
//! this reads the built binary's sections and symbols (binutils' readelf and nm) and checks
//! that functions of the modules and crates below (one per group of the script's patterns)
//! landed there, and that serving code did not. It reads the binary of the profile the tests
//! run in (CI: release); the shipped one (dist) is linked with the same script.

use std::process::Command;

/// Demangled path prefixes of functions cold-text.ld moves, one per pattern group.
const COLD: &[&str] = &[
    "containerd_shim_vm::seed::vfat::",
    "containerd_shim_vm::seed::iso::",
    "containerd_shim_vm::seed::nocloud::",
    "containerd_shim_vm::seed::user_data::",
    "containerd_shim_vm::seed::config_drive::",
    "containerd_shim_vm::doctor::",
    "containerd_shim_vm::host::dhcp::",
    "dhcproto::",
    "yaml_serde::",
    "fatfs::",
    "regex_automata::",
];

/// Functions the serving shim runs: Task requests, a VM's launch.
const HOT: &[&str] = &["containerd_shim_vm::service::task::", "containerd_shim_vm::vm::launch::"];

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} (Debian package binutils): {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Start and end addresses of section `name`.
fn section(binary: &str, name: &str) -> (u64, u64) {
    let table = run("readelf", &["-SW", binary]);
    let line = table
        .lines()
        .find(|line| line.split_whitespace().any(|word| word == name))
        .unwrap_or_else(|| panic!("{binary} has no section {name}:\n{table}"));
    // `[Nr] Name Type Address Off Size ...`, the `[Nr]` maybe split in two words.
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|word| *word == name).expect("found above");
    let hex = |word: &str| u64::from_str_radix(word, 16).unwrap_or_else(|_| panic!("{word:?} in {line:?}"));
    let (address, size) = (hex(words[at + 2]), hex(words[at + 4]));
    (address, address + size)
}

#[test]
fn code_the_serving_shim_never_runs_is_in_text_cold() {
    let binary = env!("CARGO_BIN_EXE_containerd-shim-vm-v1");
    let (start, end) = section(binary, ".text.cold");
    let symbols = run("nm", &["-C", "--defined-only", binary]);
    let functions: Vec<(u64, &str)> = symbols
        .lines()
        .filter_map(|line| {
            let (address, rest) = line.split_once(' ')?;
            let (kind, name) = rest.split_once(' ')?;
            matches!(kind, "t" | "T").then(|| (u64::from_str_radix(address, 16).ok(), name))
        })
        .filter_map(|(address, name)| Some((address?, name)))
        .collect();
    for (prefixes, cold) in [(COLD, true), (HOT, false)] {
        for prefix in prefixes {
            let found: Vec<&(u64, &str)> = functions.iter().filter(|(_, name)| name.starts_with(prefix)).collect();
            assert!(!found.is_empty(), "no function {prefix}*: was it renamed? (cold-text.ld names it too)");
            let misplaced: Vec<&str> = found
                .iter()
                .filter(|(address, _)| (start..end).contains(address) != cold)
                .map(|(_, name)| *name)
                .collect();
            assert!(
                misplaced.is_empty(),
                "{} of {} functions {prefix}* are {} .text.cold: {:?}",
                misplaced.len(),
                found.len(),
                if cold { "outside" } else { "in" },
                &misplaced[..misplaced.len().min(5)]
            );
        }
    }
}
