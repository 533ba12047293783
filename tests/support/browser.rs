//! Headless Chromium (Debian's `chromium`, installed by `scripts/test.sh`)
//! for the dashboard's end-to-end test: the DOM after the page's scripts
//! ran, and a screenshot to look for the charts' colours in.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `CHROMIUM` or `/usr/bin/chromium`.
pub fn chromium() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    anyhow::ensure!(
        path.exists(),
        "{} not found: install Debian's chromium (scripts/test.sh does) or set CHROMIUM",
        path.display()
    );
    Ok(path)
}

/// Runs Chromium headless on `url` with `extra` arguments, giving the
/// page's scripts `budget_ms` of virtual time; returns stdout.
fn run(url: &str, extra: &[&str], budget_ms: u32) -> anyhow::Result<String> {
    let profile = std::env::temp_dir().join(format!("outbox-chromium-{}", rand::random::<u32>()));
    let output = Command::new(chromium()?)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--virtual-time-budget={budget_ms}"),
        ])
        .args(extra)
        .arg(url)
        .output()?;
    let _ = std::fs::remove_dir_all(&profile);
    anyhow::ensure!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The serialised DOM of `url` once its scripts have run.
pub fn dump_dom(url: &str) -> anyhow::Result<String> {
    run(url, &["--dump-dom"], 4000)
}

/// A PNG screenshot of `url` at `width`×`height`, written to `path`.
pub fn screenshot(url: &str, path: &Path, width: u32, height: u32) -> anyhow::Result<()> {
    run(
        url,
        &[
            &format!("--screenshot={}", path.display()),
            &format!("--window-size={width},{height}"),
        ],
        4000,
    )?;
    anyhow::ensure!(path.exists(), "chromium wrote no screenshot");
    Ok(())
}

/// How many pixels of the PNG at `path` are within `tolerance` (per
/// channel) of `rgb`.
pub fn count_pixels(path: &Path, rgb: [u8; 3], tolerance: u8) -> anyhow::Result<usize> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let info = reader.next_frame(&mut buf)?;
    let channels = info.color_type.samples();
    anyhow::ensure!(
        info.bit_depth == png::BitDepth::Eight && channels >= 3,
        "unexpected PNG format {:?} {:?}",
        info.color_type,
        info.bit_depth
    );
    Ok(buf[..info.buffer_size()]
        .chunks_exact(channels)
        .filter(|px| (0..3).all(|i| px[i].abs_diff(rgb[i]) <= tolerance))
        .count())
}
