//! The layer zips as Lambda unpacks them (`layer/build.sh`): one executable at
//! `extensions/scoped-secrets`, a static ELF of the right machine, that starts and fails cleanly
//! outside Lambda, natively on x86_64 and under `qemu-aarch64` for arm64. And the arm64 binary,
//! under qemu, serving a function in the local Lambda environment against MiniStack. And what a
//! user verifies a zip with: `SHA256SUMS` beside the zips, and the dependency tree embedded in
//! each binary by cargo-auditable (its SBOM).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Object as _, ObjectSection as _};
use scoped_secrets_tests::lambda::{Options, Program, target_dir};
use scoped_secrets_tests::{Stack, sha256_hex};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{TIMEOUT, read, value_of};

/// One Lambda architecture of the layer.
struct Arch {
    name: &'static str,
    machine: elf::Machine,
    /// How this (x86_64) machine runs the binary: directly, or under an emulator.
    runner: Option<&'static str>,
}

const ARCHES: [Arch; 2] = [
    Arch { name: "x86_64", machine: elf::EM_X86_64, runner: None },
    Arch { name: "arm64", machine: elf::EM_AARCH64, runner: Some("qemu-aarch64") },
];

const ENTRY: &str = "extensions/scoped-secrets";

/// The zip's one entry: its Unix mode and bytes. Fails unless the zip holds exactly [`ENTRY`].
fn layer_entry(arch: &Arch) -> anyhow::Result<(u32, Vec<u8>)> {
    let path = target_dir().join("layer").join(format!("scoped-secrets-{}.zip", arch.name));
    let file = std::fs::File::open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e} (build it with layer/build.sh; ./tests/run.sh does)", path.display()))?;
    let mut zip = zip::ZipArchive::new(file)?;
    let names: Vec<String> = zip.file_names().map(|name| name.map(|n| n.into_owned())).collect::<Result<_, _>>()?;
    anyhow::ensure!(names == [ENTRY], "{}: entries {names:?}, expected only {ENTRY}", path.display());
    let mut entry = zip.by_index(0)?;
    let mode = entry.unix_mode().ok_or_else(|| anyhow::anyhow!("{ENTRY} has no Unix mode"))?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes)?;
    Ok((mode, bytes))
}

/// The binary from the zip, written out executable in a directory of its own (`test` names
/// it: tests run in parallel), and the command that runs it here.
fn extracted(arch: &Arch, test: &str) -> anyhow::Result<Program> {
    use std::os::unix::fs::PermissionsExt;
    let (_, bytes) = layer_entry(arch)?;
    let dir = target_dir().join("layer").join(format!("extracted-{}-{test}-{}", arch.name, std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let binary = dir.join("scoped-secrets");
    std::fs::write(&binary, bytes)?;
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))?;
    Ok(match arch.runner {
        None => Program::new(binary),
        Some(runner) => Program { args: vec![binary.display().to_string()], ..Program::new(runner) },
    })
}

#[test]
fn each_layer_zip_holds_one_static_executable_for_its_architecture() -> anyhow::Result<()> {
    for arch in &ARCHES {
        let (mode, bytes) = layer_entry(arch)?;
        assert_eq!(mode & 0o170_000, 0o100_000, "{}: a regular file", arch.name);
        assert_eq!(mode & 0o7777, 0o755, "{}: rwxr-xr-x, so Lambda can run it", arch.name);

        let file = ElfFile64::<object::Endianness>::parse(bytes.as_slice())?;
        let endian = file.endian();
        let header = file.elf_header();
        assert_eq!(header.e_machine(endian), arch.machine, "{}: ELF machine", arch.name);
        assert_eq!(header.e_type(endian), elf::ET_EXEC, "{}: an executable, not a shared object", arch.name);
        let segments: Vec<elf::ProgramType> = file.elf_program_headers().iter().map(|p| p.p_type(endian)).collect();
        assert!(segments.contains(&elf::PT_LOAD), "{}: {segments:?}", arch.name);
        // Static: no program interpreter (no dynamic loader asked for) and no dynamic section
        // (no shared library, no relocation at start). Lambda's Amazon Linux has no musl.
        assert!(!segments.contains(&elf::PT_INTERP), "{}: has an interpreter: {segments:?}", arch.name);
        assert!(!segments.contains(&elf::PT_DYNAMIC), "{}: has a dynamic section: {segments:?}", arch.name);
    }
    Ok(())
}

/// Runs `program` with an empty environment; returns the time from spawn to its first JSON
/// line, that line, and the exit code.
async fn start_outside_lambda(program: &Program) -> anyhow::Result<(Duration, Value, Option<i32>)> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&program.program)
        .args(&program.args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(TIMEOUT, lines.next_line()).await??;
    let elapsed = started.elapsed();
    let line: Value = serde_json::from_str(first.as_deref().unwrap_or_default())?;
    let rest = tokio::time::timeout(TIMEOUT, async {
        let mut rest = Vec::new();
        while let Some(line) = lines.next_line().await? {
            rest.push(line);
        }
        anyhow::Ok(rest)
    })
    .await??;
    assert!(rest.is_empty(), "one line only: {rest:?}");
    let status = tokio::time::timeout(TIMEOUT, child.wait()).await??;
    Ok((elapsed, line, status.code()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_layer_binary_starts_and_refuses_to_run_outside_lambda() -> anyhow::Result<()> {
    const RUNS: usize = 7;
    for arch in &ARCHES {
        let program = extracted(arch, "start")?;
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let (elapsed, line, code) = start_outside_lambda(&program).await?;
            assert_eq!(line["event"], "init_failed", "{}: {line}", arch.name);
            assert_eq!(line["level"], "ERROR", "{}: {line}", arch.name);
            assert!(
                line["reason"].as_str().is_some_and(|r| r.contains("AWS_LAMBDA_RUNTIME_API")),
                "{}: names the missing variable: {line}",
                arch.name
            );
            assert_eq!(code, Some(1), "{}: exits 1", arch.name);
            times.push(elapsed);
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // A sanity figure, not a benchmark (README, "Layer"): under qemu it measures the emulator.
        eprintln!(
            "{} ({}): spawn -> init_failed line, {RUNS} runs: median {:.1} ms, min {:.1} ms, max {:.1} ms",
            arch.name,
            arch.runner.unwrap_or("native"),
            ms(times[RUNS / 2]),
            ms(times[0]),
            ms(times[RUNS - 1]),
        );
        assert!(times[RUNS / 2] < Duration::from_secs(2), "{}: starts in well under 2 s", arch.name);
        remove_extracted(&program);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_arm64_layer_binary_serves_a_function_under_qemu() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let extension = extracted(&ARCHES[1], "serve")?;
    let options = Options { extension: extension.clone(), ..Options::default() };
    let (environment, _port) =
        stack.environment_with("db=app/db", &[("SCOPED_SECRETS_CACHE_TTL", "0")], options).await?;

    let invoked = environment.invoke(read("db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["status"], 200, "{}\n{}", invoked.payload, environment.extension.output.text());
    assert_eq!(invoked.payload["sha256"], sha256_hex(value_of("app/db")));
    let invoked = environment.invoke(read("app/api"), TIMEOUT).await?;
    assert_eq!(invoked.payload["error"], "secret_not_allowed");

    // The emulated binary signed its STS and Secrets Manager calls correctly (ring on aarch64).
    let calls = stack.proxy.assume_role_calls();
    assert!(!calls.is_empty() && calls.iter().all(|c| c.status == 200), "{calls:?}");
    assert!(stack.proxy.secrets_manager_calls().iter().any(|c| c.status == 200));
    let ready = environment.extension.output.wait_for_event("ready", TIMEOUT).await?;
    eprintln!("arm64 (qemu-aarch64) in the local Lambda environment: ready line {ready}");
    remove_extracted(&extension);
    Ok(())
}

fn remove_extracted(program: &Program) {
    let binary = program.args.first().map_or(program.program.as_path(), |a| Path::new(a));
    if let Some(dir) = binary.parent().map(PathBuf::from) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `SHA256SUMS` lists every zip `layer/build.sh` left in the directory, in `sha256sum`'s format,
/// and each checksum is right: checked here and by `sha256sum --check`, as a user would.
#[test]
fn sha256sums_lists_every_layer_zip_with_its_checksum() -> anyhow::Result<()> {
    use sha2::Digest as _;
    let dir = target_dir().join("layer");
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS"))
        .map_err(|e| anyhow::anyhow!("{}/SHA256SUMS: {e} (layer/build.sh writes it)", dir.display()))?;
    let mut listed = Vec::new();
    for line in sums.lines() {
        // Text mode: the hash, two spaces, the file name.
        let (hash, name) = line.split_once("  ").ok_or_else(|| anyhow::anyhow!("not sha256sum's format: {line:?}"))?;
        assert!(hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')), "{line:?}");
        assert!(!name.contains('/'), "a name beside SHA256SUMS: {name}");
        let bytes = std::fs::read(dir.join(name))?;
        let actual: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hash, actual, "{name}");
        listed.push(name.to_owned());
    }
    let mut zips: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("scoped-secrets-") && name.ends_with(".zip"))
        .collect();
    zips.sort();
    assert_eq!(listed, zips, "every zip, sorted, once");
    for arch in &ARCHES {
        assert!(listed.contains(&format!("scoped-secrets-{}.zip", arch.name)), "{}", arch.name);
    }
    let check = std::process::Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&dir)
        .output()?;
    assert!(check.status.success(), "sha256sum --check: {}", String::from_utf8_lossy(&check.stdout));
    Ok(())
}

/// The name and version of every package in `Cargo.lock`.
fn locked_packages() -> anyhow::Result<std::collections::BTreeSet<(String, String)>> {
    let lock = std::fs::read_to_string(scoped_secrets_tests::ministack::workspace_root().join("Cargo.lock"))?;
    let mut packages = std::collections::BTreeSet::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(value) = line.strip_prefix("name = ") {
            name = Some(value.trim_matches('"').to_owned());
        } else if let (Some(value), Some(name)) = (line.strip_prefix("version = "), name.take()) {
            packages.insert((name, value.trim_matches('"').to_owned()));
        }
    }
    Ok(packages)
}

/// Each layer binary carries its SBOM: cargo-auditable's `.dep-v0` section, zlib-compressed
/// JSON of the packages compiled into it, as `cargo audit bin`, Trivy, Syft or Grype read it.
/// It names this crate at the version the binary reports, the AWS SDK and the TLS stack at the
/// versions `Cargo.lock` pins, and nothing the tests alone use.
#[test]
fn each_layer_binary_embeds_the_dependency_tree_it_was_built_from() -> anyhow::Result<()> {
    use std::io::Read as _;
    let locked = locked_packages()?;
    for arch in &ARCHES {
        let (_, bytes) = layer_entry(arch)?;
        let file = ElfFile64::<object::Endianness>::parse(bytes.as_slice())?;
        let section = file
            .section_by_name(".dep-v0")
            .ok_or_else(|| anyhow::anyhow!("{}: no .dep-v0 section (built without cargo auditable?)", arch.name))?;
        let mut json = String::new();
        flate2::read::ZlibDecoder::new(section.data()?).read_to_string(&mut json)?;
        let audit: Value = serde_json::from_str(&json)?;
        let packages = audit["packages"].as_array().ok_or_else(|| anyhow::anyhow!("{}: no packages", arch.name))?;
        let find = |name: &str| packages.iter().find(|p| p["name"] == name);
        let root = find("scoped-secrets").ok_or_else(|| anyhow::anyhow!("{}: no scoped-secrets", arch.name))?;
        assert_eq!(root["version"], scoped_secrets::version::VERSION, "{}", arch.name);
        assert_eq!((root["root"].as_bool(), root["source"].as_str()), (Some(true), Some("local")), "{}", arch.name);
        for package in packages {
            let (name, version) =
                (package["name"].as_str().unwrap_or_default(), package["version"].as_str().unwrap_or_default());
            assert!(
                locked.contains(&(name.to_owned(), version.to_owned())),
                "{}: {name} {version} is not in Cargo.lock",
                arch.name
            );
            if name != "scoped-secrets" {
                assert_eq!(package["source"], "crates.io", "{}: {name}", arch.name);
            }
        }
        for shipped in [
            "aws-sdk-sts",
            "aws-sdk-secretsmanager",
            "aws-sdk-iam",
            "aws-sigv4",
            "rustls",
            "ring",
            "hyper",
            "tokio",
            "zeroize",
        ] {
            assert!(find(shipped).is_some(), "{}: {shipped} is in the binary's SBOM", arch.name);
        }
        for test_only in ["scoped-secrets-tests", "lambda-simulator", "zip", "aws-lc-rs"] {
            assert!(find(test_only).is_none(), "{}: {test_only} is not in the binary", arch.name);
        }
        // layer/sbom.py, the reader docs/release.md gives users, reads the same tree from the zip.
        let zip = target_dir().join("layer").join(format!("scoped-secrets-{}.zip", arch.name));
        let script = scoped_secrets_tests::ministack::workspace_root().join("layer/sbom.py");
        let printed = std::process::Command::new("python3").arg(script).arg(&zip).output()?;
        assert!(printed.status.success(), "{}: {}", arch.name, String::from_utf8_lossy(&printed.stderr));
        assert_eq!(serde_json::from_slice::<Value>(&printed.stdout)?, audit, "{}: layer/sbom.py", arch.name);
        eprintln!("{}: SBOM of {} packages, {} bytes compressed", arch.name, packages.len(), section.size());
    }
    Ok(())
}
