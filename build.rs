//! Build script: compiles the interpreter-state C file against the headers of the exact
//! interpreter PyO3 builds for, and makes test and bench binaries load that interpreter's
//! libpython (not whichever one the loader cache names first).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    pyo3_build_config::add_libpython_rpath_link_args();

    let config = pyo3_build_config::get();
    // The C file refuses these too; saying so here comes before any compiler output.
    assert!(
        !config.is_free_threaded(),
        "corolet does not support free-threaded CPython builds (3.13t, 3.14t, ...) yet: \
         build it with the interpreter's GIL build (python3.x, not python3.xt)"
    );
    let version = config.version();
    let (major, minor) = (version.major, version.minor);
    assert!(
        (major, minor) >= (3, 10) && (major, minor) <= (3, 15),
        "corolet supports CPython 3.10 to 3.15, not {major}.{minor}"
    );
    let python = config
        .executable()
        .map(str::to_string)
        .or_else(|| std::env::var("PYO3_PYTHON").ok())
        .unwrap_or_else(|| "python3".to_string());
    let out = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['include'])",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} to find its headers: {e}"));
    assert!(
        out.status.success(),
        "{python} could not report its include directory"
    );
    let include = PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim());

    cc::Build::new()
        .file("src/pystate.c")
        .file("src/gcstate.c")
        .include(&include)
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(true)
        .opt_level(2)
        .compile("corolet_pystate");

    println!("cargo:rerun-if-changed=src/pystate.c");
    println!("cargo:rerun-if-changed=src/gcstate.c");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
