//! The interpreter against PyTorch: each `.pt2` fixture (`fixtures/make_pt2.py`) run on the input
//! that `fixtures/make_pt2_refs.py` saved, compared with `torch.export.load(...).module()`'s forward,
//! the gradients of the fixed loss `sum(out * w)` and the buffers after the forward.
use std::path::PathBuf;

use serde_json::Value;
use tch::{Kind, Tensor};

use super::*;
use crate::model::pt2;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/models/pt2")
        .join(name)
}

fn tensor(v: &Value, shape: &[i64]) -> Tensor {
    let data: Vec<f32> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    Tensor::from_slice(&data).reshape(shape)
}

fn shape(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_i64().unwrap())
        .collect()
}

/// Largest absolute difference, relative to the reference's largest magnitude (at least 1).
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let got = got.detach().to_kind(Kind::Float).reshape([-1]);
    let want = want.reshape([-1]);
    let diff = (&got - &want).abs().max().double_value(&[]);
    diff / want.abs().max().double_value(&[]).max(1.0)
}

/// Runs one fixture and returns the worst relative error over output, gradients and buffers.
fn compare(name: &str) -> f64 {
    let program = pt2::read(&fixture(&format!("{name}.pt2"))).unwrap();
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("{name}.ref.json"))).unwrap(),
    )
    .unwrap();
    let interp = Interpreter::new(&program, false).unwrap();
    let x = tensor(&refs["x"], &shape(&refs["x_shape"]));
    let weights: Vec<&Tensor> = program.weights.iter().map(|w| &w.tensor).collect();
    let out = interp.run(&x, &weights, true).unwrap();
    let out_shape = shape(&refs["out_shape"]);
    assert_eq!(out.size(), out_shape, "{name}: output shape");
    let mut worst = rel_err(&out, &tensor(&refs["out"], &out_shape));
    assert!(worst < 1e-6, "{name}: forward off by {worst:e}");

    let loss = (&out * tensor(&refs["loss_weight"], &out_shape)).sum(Kind::Float);
    let want_loss = refs["loss"].as_f64().unwrap();
    assert!((loss.double_value(&[]) - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0));
    let trainable: Vec<&pt2::Weight> = program.parameters().filter(|w| w.requires_grad).collect();
    let inputs: Vec<Tensor> = trainable.iter().map(|w| w.tensor.shallow_clone()).collect();
    let grads = Tensor::run_backward(&[&loss], &inputs, false, false);
    for (w, g) in trainable.iter().zip(&grads) {
        let want = &refs["grads"][&w.fqn];
        if want.is_null() {
            // Used only under `torch.no_grad()`: PyTorch gives it no gradient, and neither may we.
            assert!(
                !g.defined(),
                "{name}: {} got a gradient PyTorch does not give",
                w.fqn
            );
            continue;
        }
        assert!(g.defined(), "{name}: no gradient for {}", w.fqn);
        let e = rel_err(g, &tensor(want, &w.sizes));
        assert!(e < 1e-5, "{name}: gradient of {} off by {e:e}", w.fqn);
        worst = worst.max(e);
    }
    for w in program.parameters().filter(|w| !w.requires_grad) {
        assert!(
            refs["grads"][&w.fqn].is_null(),
            "{name}: {} is frozen",
            w.fqn
        );
    }
    let buffers = refs["buffers_after"].as_object().unwrap();
    assert_eq!(buffers.len(), program.buffers().count(), "{name}: buffers");
    for w in program.buffers() {
        let e = rel_err(&w.tensor, &tensor(&buffers[&w.fqn], &w.sizes));
        assert!(
            e < 1e-6,
            "{name}: buffer {} after one forward off by {e:e}",
            w.fqn
        );
        worst = worst.max(e);
    }
    eprintln!("{name}: worst relative error vs PyTorch {worst:e}");
    worst
}

#[test]
fn forward_gradients_and_buffers_match_pytorch_on_every_fixture() {
    tch::set_num_threads(1);
    for name in ["mlp", "convbn", "tied", "nograd"] {
        compare(name);
    }
}

#[test]
fn the_input_guard_names_what_differs() {
    let program = pt2::read(&fixture("mlp.pt2")).unwrap();
    let interp = Interpreter::new(&program, false).unwrap();
    let weights: Vec<&Tensor> = program.weights.iter().map(|w| &w.tensor).collect();
    let err = |x: Tensor| interp.run(&x, &weights, false).unwrap_err();
    assert!(
        err(Tensor::zeros([4, 9], (Kind::Float, tch::Device::Cpu))).contains("input dim 1 is 9")
    );
    assert!(err(Tensor::zeros([1, 8], (Kind::Float, tch::Device::Cpu)))
        .contains("outside the exported range [2, 1024]"));
    assert!(err(Tensor::zeros([4, 8], (Kind::Double, tch::Device::Cpu))).contains("Double"));
    assert!(err(Tensor::zeros([4], (Kind::Float, tch::Device::Cpu))).contains("1 dims"));
    let short: Vec<&Tensor> = weights[1..].to_vec();
    let x = Tensor::zeros([4, 8], (Kind::Float, tch::Device::Cpu));
    assert!(interp
        .run(&x, &short, false)
        .unwrap_err()
        .contains("weights given"));
    // Without grad, nothing is recorded.
    let out = interp.run(&x, &weights, false).unwrap();
    assert!(!out.requires_grad());
}

#[test]
fn ops_outside_aten_are_refused_unless_trusted() {
    let mut program = pt2::read(&fixture("mlp.pt2")).unwrap();
    program.graph.nodes[0].target = "torch.ops.evil.exec.default".into();
    let err = Interpreter::new(&program, false).err().unwrap();
    assert_eq!(
        err,
        "refusing to run torch.ops.evil.exec.default: only aten ops and the higher-order ops \
         wrap_with_set_grad_enabled, wrap_with_autocast, cond run without --trust-model"
    );
    // Trusted, it reaches the dispatcher, which does not know the op: an error, not an abort.
    let err = Interpreter::new(&program, true).err().unwrap();
    assert!(err.contains("evil::exec"), "{err}");
    program.graph.nodes[0].target = "torch.ops.higher_order.map_impl".into();
    assert!(Interpreter::new(&program, true)
        .err()
        .unwrap()
        .contains("higher_order.map_impl"));
}

#[test]
fn a_broken_lowered_program_is_an_error_not_an_abort() {
    for text in [
        "input user x 6 2 s0 8\nnode aten::linear default 1 input T:nope 1 T:y\noutput user y\n",
        "input user x 6 2 s0 8\nnode aten::nosuchop default 0 1 T:y\noutput user y\n",
        "input user x 6 1 zz\nsymop mul 2 a I:x b I:2 1 S:y\noutput user x\n",
        "hop set_grad 0 0 0\n",
        "input weight w 12345678901234567890\n",
    ] {
        let c_text = CString::new(text).unwrap();
        let mut raw: *mut RawProgram = std::ptr::null_mut();
        // SAFETY: as in Interpreter::new.
        let res = check(unsafe { tl_pt2_compile(c_text.as_ptr(), &mut raw) });
        assert!(res.is_err(), "{text}");
        assert!(raw.is_null());
    }
}
