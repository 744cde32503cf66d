//! Compiles libopus (floating point, portable C) with `cc`: the sources are the ones libopus's own
//! build lists in `celt_sources.mk`, `silk_sources.mk` and `opus_sources.mk`, so they follow the
//! vendored release without a list kept here. No cmake, autotools or system library is needed.

use std::path::{Path, PathBuf};

/// The files of make variable `name` in a libopus `*_sources.mk` file.
fn sources(mk: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = mk.lines();
    while let Some(line) = lines.next() {
        let Some((var, rest)) = line.split_once('=') else {
            continue;
        };
        if var.trim() != name {
            continue;
        }
        let mut cont = rest.trim_end().ends_with('\\');
        out.extend(words(rest));
        while cont {
            let Some(next) = lines.next() else { break };
            cont = next.trim_end().ends_with('\\');
            out.extend(words(next));
        }
        return out;
    }
    panic!("no {name} in the libopus source lists");
}

fn words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split_whitespace()
        .filter(|w| *w != "\\")
        .map(str::to_owned)
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("opus");
    let read = |f: &str| {
        let p = root.join(f);
        println!("cargo:rerun-if-changed={}", p.display());
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let (celt, silk, opus) = (
        read("celt_sources.mk"),
        read("silk_sources.mk"),
        read("opus_sources.mk"),
    );
    let version = read("package_version");
    let version = version
        .split('"')
        .nth(1)
        .unwrap_or("unknown")
        .to_owned();
    let mut files = Vec::new();
    files.extend(sources(&celt, "CELT_SOURCES"));
    files.extend(sources(&silk, "SILK_SOURCES"));
    files.extend(sources(&silk, "SILK_SOURCES_FLOAT"));
    files.extend(sources(&opus, "OPUS_SOURCES"));
    files.extend(sources(&opus, "OPUS_SOURCES_FLOAT"));

    let mut build = cc::Build::new();
    for dir in ["include", "celt", "silk", "silk/float", "silk/fixed", "src"] {
        build.include(root.join(dir));
    }
    build
        .define("OPUS_BUILD", None)
        .define("VAR_ARRAYS", None)
        .define("HAVE_LRINT", None)
        .define("HAVE_LRINTF", None)
        .define("PACKAGE_VERSION", Some(format!("\"{version}\"").as_str()))
        // Release code even in debug builds: the encoder is on the relay's audio path.
        .opt_level(2)
        .debug(false)
        .warnings(false);
    for f in &files {
        let p: &Path = &root.join(f);
        build.file(p);
    }
    build.compile("opus");
    println!(
        "cargo:include={}",
        root.join("include").display()
    );
}
