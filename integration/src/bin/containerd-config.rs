//! Writes the containerd config snippets `packaging/` ships, both formats, from the one
//! description in `integration::containerd_config`.
//! Usage: containerd-config OUT_DIR

use anyhow::{Context, Result};
use integration::containerd_config::{ConfigVersion, ContainerdConfig};

fn main() -> Result<()> {
    let out = std::env::args().nth(1).context("usage: containerd-config OUT_DIR")?;
    for version in [ConfigVersion::V2, ConfigVersion::V3] {
        let path = std::path::Path::new(&out).join(format!("containerd-config-v{}.toml", version.number()));
        std::fs::write(&path, ContainerdConfig::packaging().render(version))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
