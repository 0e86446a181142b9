//! Decode + encode speed on a generated 50 MB model (about 100 weight tensors of 0.5 MB
//! feeding a MatMul chain). Prints the timings; run with `cargo bench --bench decode_encode`.

use prost::Message;
use qrange::onnx::{self, proto};
use std::path::Path;
use std::time::Instant;

fn model_50mb() -> Vec<u8> {
    let n_layers = 100;
    let (k, n) = (256i64, 512i64); // 128 Ki floats = 512 KiB per weight
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut prev = "x".to_string();
    for i in 0..n_layers {
        let w = format!("w{i}");
        let vals: Vec<u8> = (0..k * n)
            .flat_map(|j| ((j * 31 + i) as f32 * 1e-4).sin().to_le_bytes())
            .collect();
        inits.push(proto::TensorProto {
            name: Some(w.clone()),
            dims: if i % 2 == 0 { vec![k, n] } else { vec![n, k] },
            data_type: Some(1),
            raw_data: Some(vals),
            ..Default::default()
        });
        let out = format!("h{i}");
        nodes.push(proto::NodeProto {
            name: Some(format!("mm{i}")),
            op_type: Some("MatMul".into()),
            input: vec![prev.clone(), w],
            output: vec![out.clone()],
            ..Default::default()
        });
        prev = out;
    }
    let m = proto::ModelProto {
        ir_version: Some(8),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(proto::GraphProto {
            name: Some("big".into()),
            node: nodes,
            initializer: inits,
            input: vec![proto::ValueInfoProto {
                name: Some("x".into()),
                ..Default::default()
            }],
            output: vec![proto::ValueInfoProto {
                name: Some(prev),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    m.encode_to_vec()
}

fn main() {
    let bytes = model_50mb();
    println!("model size: {:.1} MB", bytes.len() as f64 / 1e6);
    let mut dec = Vec::new();
    let mut enc = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let m = onnx::decode_model(&bytes, Path::new("."), Path::new("big.onnx")).expect("decode");
        dec.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let out = onnx::model_to_bytes(&m).expect("encode");
        enc.push(t.elapsed().as_secs_f64());
        assert_eq!(out.len(), bytes.len());
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (d, e) = (med(&mut dec), med(&mut enc));
    println!("decode  median {:.1} ms", d * 1e3);
    println!("encode  median {:.1} ms", e * 1e3);
    println!("total   median {:.1} ms (goal < 300 ms)", (d + e) * 1e3);
}
