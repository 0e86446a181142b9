//! Compiles the vendored ONNX schema (`proto/onnx.proto`) into Rust types with
//! protox (a pure-Rust protobuf compiler) and prost-build. No system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
