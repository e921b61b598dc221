//! The example functions of `examples/`, each started the way Lambda starts its language: the
//! Rust one as a custom runtime's `bootstrap` (`lambda_runtime` inside), the Python and Node.js
//! ones by their real runtime interface clients with the handler name.
//!
//! `tests/prepare.sh` installs the clients under `<workspace>/target/`: `awslambdaric` and
//! boto3 (PyPI) in `examples-venv`, `aws-lambda-ric` (npm) in `node-ric`, and the AWS SDK for
//! JavaScript v3 client (npm) in `node-sdk`, where Lambda's runtimes have them built in.

use std::path::PathBuf;

use anyhow::Context;

use crate::lambda::Program;
use crate::ministack::workspace_root;

/// The Rust example, `examples/rust-reader` (release build).
pub fn rust_reader() -> Program {
    Program::rust_reader()
}

/// The Rust SDK example, `examples/rust-sdk-reader` (release build).
pub fn rust_sdk_reader() -> Program {
    Program::rust_sdk_reader()
}

/// The Python example, `examples/python-reader/app.py`, under `python -m awslambdaric app.handler`.
pub fn python_reader() -> Program {
    python("python-reader")
}

/// The boto3 example, `examples/python-sdk-reader/app.py`, under `python -m awslambdaric app.handler`.
pub fn python_sdk_reader() -> Program {
    python("python-sdk-reader")
}

fn python(example: &str) -> Program {
    let mut program = Program::interface_client(
        workspace_root().join("target/examples-venv/bin/python"),
        &["-m", "awslambdaric"],
        workspace_root().join("examples").join(example),
        "app.handler",
    );
    // No __pycache__ in the source tree (Lambda's task root is read-only anyway).
    program.env.push(("PYTHONDONTWRITEBYTECODE".to_owned(), "1".to_owned()));
    program
}

/// The Node.js example, `examples/node-reader/index.mjs`, under `aws-lambda-ric index.handler`
/// run by the machine's `node`.
pub fn node_reader() -> anyhow::Result<Program> {
    node("node-reader")
}

/// The AWS SDK for JavaScript v3 example, `examples/node-sdk-reader/index.js`, under
/// `aws-lambda-ric index.handler`, finding the SDK through `NODE_PATH` as in Lambda's runtimes.
pub fn node_sdk_reader() -> anyhow::Result<Program> {
    let mut program = node("node-sdk-reader")?;
    let modules = workspace_root().join("target/node-sdk/node_modules");
    program.env.push(("NODE_PATH".to_owned(), modules.display().to_string()));
    Ok(program)
}

fn node(example: &str) -> anyhow::Result<Program> {
    let node = which("node").context("node is not on PATH (./tests/prepare.sh installs it)")?;
    let client =
        workspace_root().join("target/node-ric/node_modules/aws-lambda-ric/bin/index.mjs").display().to_string();
    Ok(Program::interface_client(
        node,
        &[client.as_str()],
        workspace_root().join("examples").join(example),
        "index.handler",
    ))
}

/// The first `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|path| path.is_file())
}
