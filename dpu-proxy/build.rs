//! Generates the agent's protobuf messages and async ttrpc client/server from
//! `proto/agent.proto` (pure Rust codegen; no generated code is checked in).
use std::{env, fs, path::PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("proto");
    fs::create_dir_all(&out).expect("create proto out dir");
    Codegen::new()
        .input("proto/agent.proto")
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .out_dir(&out)
        .run()
        .expect("generate agent protos");
    // `include!` rejects inner attributes and inner doc comments: drop them.
    for entry in fs::read_dir(&out).expect("read proto out dir") {
        let path = entry.expect("dir entry").path();
        let text = fs::read_to_string(&path).expect("read generated file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        fs::write(&path, kept.join("\n")).expect("write generated file");
    }
}
