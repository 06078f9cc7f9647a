"""Spike for issue 25: read a .pt2 (torch.export.save) with the standard library only (zipfile + json, NO torch,
NO pickle) and lower it to a flat text program + raw storage files that interp.cpp runs.

This is a stand-in for the Rust serde reader: everything it touches is what the Rust side must parse
(see FINDINGS.md). Usage: python3 lower.py IN.pt2 OUTDIR   (writes OUTDIR/prog.txt and OUTDIR/storage_*.bin)

prog.txt, one record per line, tokens separated by single spaces (names never contain spaces):
  schema MAJOR MINOR
  storage FILE NBYTES
  input param GRAPHNAME FQN STORAGEFILE DTYPE NDIM SIZES.. NDIM STRIDES.. OFFSET REQUIRES_GRAD
  input buffer|constant GRAPHNAME FQN STORAGEFILE DTYPE NDIM SIZES.. NDIM STRIDES.. OFFSET
  input user GRAPHNAME DTYPE NDIM DIM*NDIM         (DIM: an int, or a symbol of range_constraints)
  range SYMBOL MIN MAX                               (MAX -1: unbounded)
  node NS::NAME OVERLOAD NIN (ARGNAME VALUE)*NIN NOUT VALUE*NOUT
  symop add|sub|mul|floordiv|mod|neg NIN (ARGNAME VALUE)*NIN NOUT VALUE*NOUT   (Python int ops on SymInts)
  hop set_grad 0|1 NARGS VALUE*NARGS NSUBIN VALUE*NSUBIN   (the subgraph's nodes follow, then)
  hop autocast C10DTYPE ENABLED CACHE NARGS VALUE*NARGS NSUBIN VALUE*NSUBIN   (CPU autocast)
  endhop NSUBOUT VALUE*NSUBOUT NOUT VALUE*NOUT
  cond T:PRED TL:OPERANDS NOUT VALUE*NOUT, then twice (true, false): branch NSUBIN VALUE*NSUBIN, the
       branch's nodes, endbranch NSUBOUT VALUE*NSUBOUT; then endcond           (torch.cond)
  output user NAME | output buffer_mutation NAME FQN
VALUE: N | T:name | I:int | F:float | B:0|1 | S:symname | IL:a,b | FL:a,b | BL:0,1 | SL:i8,nsym | TL:a,b
       | OTL:a,_,b | OT:name|OT:_ | ST:c10code | MF:c10code | LY:c10code | DV:type[:index] | STR:%xx-escaped
  (serialized enums are translated to c10's numbering here: they differ, see FINDINGS.md)
"""
import json
import os
import re
import sys
import urllib.parse
import zipfile

SUPPORTED_MAJOR = 8  # schema.py SCHEMA_VERSION = (8, 20) in torch 2.13
# serialized ScalarType (schema.py) -> c10::ScalarType code (c10/core/ScalarType.h)
SCALAR_TYPE = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6, 8: 7, 9: 8, 10: 9, 11: 10, 12: 11, 13: 15}
MEMORY_FORMAT = {1: 0, 2: 2, 3: 3, 4: 1}  # Contiguous, ChannelsLast, ChannelsLast3d, Preserve
LAYOUT = {7: 0, 1: 1, 2: 3, 3: 4, 4: 5, 5: 6, 6: 2}  # Strided, Sparse(COO), SparseCsr, Csc, Bsr, Bsc, Mkldnn


SYM_OPS = {"add", "sub", "mul", "floordiv", "mod", "neg"}


class Refuse(Exception):
    pass


def symint(s):
    if "as_int" in s:
        return s["as_int"]
    raise Refuse(f"symbolic size in stored tensor metadata: {s}")


def enc(arg, rn=lambda n: n):
    """Encodes one serialized Argument; `rn` renames values (a subgraph's values get a prefix)."""
    (k, v), = arg.items()  # a union: exactly one key
    if k == "as_none":
        return "N"
    if k == "as_tensor":
        return "T:" + rn(v["name"])
    if k == "as_int":
        return f"I:{v}"
    if k == "as_float":
        return "F:" + repr(float(v))
    if k == "as_bool":
        return "B:1" if v else "B:0"
    if k == "as_ints":
        return "IL:" + ",".join(str(i) for i in v)
    if k == "as_floats":
        return "FL:" + ",".join(repr(float(f)) for f in v)
    if k == "as_bools":
        return "BL:" + ",".join("1" if b else "0" for b in v)
    if k == "as_sym_int":
        return ("S:" + rn(v["as_name"])) if "as_name" in v else f"I:{v['as_int']}"
    if k == "as_sym_ints":
        return "SL:" + ",".join(("n" + rn(e["as_name"])) if "as_name" in e else f"i{e['as_int']}" for e in v)
    if k == "as_tensors":
        return "TL:" + ",".join(rn(t["name"]) for t in v)
    if k == "as_optional_tensors":
        return "OTL:" + ",".join(rn(e["as_tensor"]["name"]) if "as_tensor" in e else "_" for e in v)
    if k == "as_optional_tensor":
        return "OT:" + (rn(v["as_tensor"]["name"]) if "as_tensor" in v else "_")
    if k == "as_scalar_type":
        return f"ST:{SCALAR_TYPE[v]}"
    if k == "as_memory_format":
        return f"MF:{MEMORY_FORMAT[v]}"
    if k == "as_layout":
        return f"LY:{LAYOUT[v]}"
    if k == "as_device":
        return "DV:" + v["type"] + ("" if v.get("index") is None else f":{v['index']}")
    if k == "as_string":
        return "STR:" + urllib.parse.quote(v, safe="")
    raise Refuse(f"argument kind {k} is not supported by the spike")


def lower_nodes(nodes, prefix, lines):
    rn = lambda name: prefix + name
    for n in nodes:
        t = n["target"]
        if t.startswith("_operator.") and t[len("_operator."):] in SYM_OPS:
            # Python arithmetic on SymInts (e.g. `n * 2` on the batch size): `_operator.mul`, inputs named
            # by position, SymInt output. The interpreter computes these itself.
            toks = ["symop", t[len("_operator."):], str(len(n["inputs"]))]
        elif t in ("torch.ops.higher_order.wrap_with_set_grad_enabled", "torch.ops.higher_order.wrap_with_autocast"):
            # `with torch.no_grad():` / `with torch.autocast(...):` inside forward: (mode args, subgraph,
            # *tensors) -> outputs. Inputs are unnamed; the subgraph's values get a prefix so they cannot
            # clash with the outer graph's.
            ins = n["inputs"]
            gi = next(i for i, a in enumerate(ins) if "as_graph" in a["arg"])
            if t.endswith("set_grad_enabled"):
                head = ["set_grad", "1" if ins[0]["arg"]["as_bool"] else "0"]
            else:
                device, dtype, en, cache = (next(iter(a["arg"].values())) for a in ins[:4])
                if device != "cpu":
                    raise Refuse(f"autocast on {device}")
                head = ["autocast", str(SCALAR_TYPE[dtype]), "1" if en else "0", "1" if cache else "0"]
            sub = ins[gi]["arg"]["as_graph"]["graph"]
            sp = f"{prefix}{n.get('name') or ins[gi]['arg']['as_graph']['name']}/"
            args = [enc(a["arg"], rn) for a in ins[gi + 1:]]
            subin = [enc(a, lambda x: sp + x) for a in sub["inputs"]]
            lines.append(" ".join(["hop"] + head + [str(len(args))] + args + [str(len(subin))] + subin))
            lower_nodes(sub["nodes"], sp, lines)
            subout = [enc(a, lambda x: sp + x) for a in sub["outputs"]]
            outs = [enc(o, rn) for o in n["outputs"]]
            lines.append(" ".join(["endhop", str(len(subout))] + subout + [str(len(outs))] + outs))
            continue
        elif t == "torch.ops.higher_order.cond":
            # torch.cond(pred, true_fn, false_fn, operands): (pred tensor, true graph, false graph,
            # [operands]) -> outputs. Both branches are lowered; the interpreter runs the one pred selects.
            ins = n["inputs"]
            pred = enc(ins[0]["arg"], rn)
            ops = enc(ins[3]["arg"], rn)  # TL:a,b
            outs = [enc(o, rn) for o in n["outputs"]]
            base = f"{prefix}{n.get('name') or 'cond'}"
            lines.append(f"cond {pred} {ops} {len(outs)} " + " ".join(outs))
            for bi, which in ((1, "true"), (2, "false")):
                sub = ins[bi]["arg"]["as_graph"]["graph"]
                sp = f"{base}/{which}/"
                subin = [enc(a, lambda x: sp + x) for a in sub["inputs"]]
                lines.append(" ".join(["branch", str(len(subin))] + subin))
                lower_nodes(sub["nodes"], sp, lines)
                subout = [enc(a, lambda x: sp + x) for a in sub["outputs"]]
                lines.append(" ".join(["endbranch", str(len(subout))] + subout))
            lines.append("endcond")
            continue
        elif t.startswith("torch.ops.aten."):
            _, _, ns, name, overload = t.split(".")
            toks = ["node", f"{ns}::{name}", overload, str(len(n["inputs"]))]
        else:
            raise Refuse(f"node target {t} is not supported by the spike")
        for a in n["inputs"]:
            toks += [a["name"], enc(a["arg"], rn)]
        toks.append(str(len(n["outputs"])))
        toks += [enc(o, rn) for o in n["outputs"]]
        lines.append(" ".join(toks))


def main(path, outdir):
    os.makedirs(outdir, exist_ok=True)
    z = zipfile.ZipFile(path)
    names = z.namelist()
    # every member sits under one top-level folder (the archive's stem, e.g. "train/")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1:
        raise Refuse(f"expected one root folder, found {sorted(roots)}")
    root = roots.pop() + "/"
    rd = lambda p: z.read(root + p)
    if rd("archive_format").decode() != "pt2":
        raise Refuse("not a pt2 archive")
    if rd("archive_version").decode() != "0":
        raise Refuse("unknown archive_version")
    if rd("byteorder").decode() != "little":
        raise Refuse("big-endian archive")
    models = [n for n in names if n.startswith(root + "models/") and n.endswith(".json")]
    if models != [root + "models/model.json"]:
        raise Refuse(f"expected exactly models/model.json, found {models}")
    ep = json.loads(rd("models/model.json"))
    sv = ep["schema_version"]
    if sv["major"] != SUPPORTED_MAJOR:
        raise Refuse(f"schema {sv['major']}.{sv['minor']} unsupported (need {SUPPORTED_MAJOR}.x)")
    wcfg = json.loads(rd("data/weights/model_weights_config.json"))["config"]
    ccfg = json.loads(rd("data/constants/model_constants_config.json"))["config"]
    gm = ep["graph_module"]
    g = gm["graph"]
    lines = [f"schema {sv['major']} {sv['minor']}"]
    written = set()

    def payload(fqn, cfg):
        meta = cfg[fqn]
        if meta["use_pickle"]:
            raise Refuse(f"{fqn} is pickled (tensor subclass): refused")
        tm = meta["tensor_meta"]
        if tm["layout"] != 7 or tm["device"]["type"] != "cpu":
            raise Refuse(f"{fqn}: only strided tensors are supported")
        data = rd("data/weights/" + meta["path_name"]) if cfg is wcfg else rd("data/constants/" + meta["path_name"])
        fn = "storage_" + meta["path_name"] + ".bin"
        if fn not in written:
            with open(os.path.join(outdir, fn), "wb") as f:
                f.write(data)
            written.add(fn)
            lines.append(f"storage {fn} {len(data)}")
        sizes = [symint(s) for s in tm["sizes"]]
        strides = [symint(s) for s in tm["strides"]]
        return (f"{fn} {SCALAR_TYPE[tm['dtype']]} {len(sizes)} {' '.join(map(str, sizes))} "
                f"{len(strides)} {' '.join(map(str, strides))} {symint(tm['storage_offset'])}")

    for spec in gm["signature"]["input_specs"]:
        (k, v), = spec.items()
        if k == "parameter":
            fqn = v["parameter_name"]
            rg = int(bool(wcfg[fqn]["tensor_meta"]["requires_grad"]))  # a frozen parameter keeps False
            lines.append(f"input param {v['arg']['name']} {fqn} " + payload(fqn, wcfg) + f" {rg}")
        elif k == "buffer":
            fqn = v["buffer_name"]
            lines.append(f"input buffer {v['arg']['name']} {fqn} " + payload(fqn, wcfg if fqn in wcfg else ccfg))
        elif k == "tensor_constant":
            fqn = v["tensor_constant_name"]
            lines.append(f"input constant {v['arg']['name']} {fqn} " + payload(fqn, ccfg))
        elif k == "user_input":
            (ak, av), = v["arg"].items()
            if ak != "as_tensor":
                raise Refuse(f"non-tensor user input {ak}")
            # What the input must look like: dtype, rank, static dims and symbols (checked by interp).
            tm = g["tensor_values"][av["name"]]
            dims = []
            for d in tm["sizes"]:
                if "as_int" in d:
                    dims.append(str(d["as_int"]))
                else:
                    m = re.fullmatch(r"Symbol\('(\w+)'.*\)", d["as_expr"]["expr_str"])
                    if not m:
                        raise Refuse(f"input dim {d['as_expr']['expr_str']} is not a plain symbol")
                    dims.append(m.group(1))
            lines.append(f"input user {av['name']} {SCALAR_TYPE[tm['dtype']]} {len(dims)} {' '.join(dims)}")
        else:
            raise Refuse(f"input spec {k} not supported by the spike")

    lower_nodes(g["nodes"], "", lines)

    for spec in gm["signature"]["output_specs"]:
        (k, v), = spec.items()
        if k == "user_output":
            lines.append(f"output user {v['arg']['as_tensor']['name']}")
        elif k == "buffer_mutation":
            lines.append(f"output buffer_mutation {v['arg']['name']} {v['buffer_name']}")
        else:
            raise Refuse(f"output spec {k} not supported by the spike")
    for sym, r in ep["range_constraints"].items():
        lo, hi = r["min_val"], r["max_val"]
        lines.append(f"range {sym} {lo if lo is not None else 0} {hi if hi is not None else -1}")
    with open(os.path.join(outdir, "prog.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    except Refuse as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
