"""Summarizes interp logs (out/*.log, out/tv/*.log) into the Markdown table of FINDINGS.md."""
import glob
import re
import sys


def num(line, key):
    m = re.search(key + r" ([0-9.e+-]+)", line)
    return float(m.group(1)) if m else None


rows = []
for p in sys.argv[1:] or sorted(glob.glob("out/*.log")) + sorted(glob.glob("out/tv/*.log")):
    name = p.split("/")[-1][:-4]
    ir = None
    st = {}
    for line in open(p):
        m = re.match(r"\[.*\] (\w+) IR", line)
        if m:
            ir = m.group(1)
            st[ir] = {"grads": 0, "gbit": 0, "gworst": 0.0, "buf": 0.0, "fwd": None, "adam_py": None, "adam_lt": None, "nodes": None}
            continue
        if ir is None:
            continue
        s = st[ir]
        if "nodes," in line:
            s["nodes"] = int(line.split()[0])
        elif "forward (" in line:
            s["fwd"] = num(line, "max_abs")
        elif line.strip().startswith("grad "):
            s["grads"] += 1
            a, r, scale = num(line, "max_abs"), num(line, "max_rel"), num(line, r"\(ref max")
            s["gbit"] += a == 0
            if scale > 1e-6:
                s["gworst"] = max(s["gworst"], r)
        elif "buffer after" in line:
            s["buf"] = max(s["buf"], num(line, "max_abs"))
        elif "(PyTorch's update) vs" in line:
            s["adam_py"] = num(line, "max_abs")
        elif "(libtorch Adam) vs" in line:
            s["adam_lt"] = num(line, "max_abs")
    t, c, e = st.get("train", {}), st.get("train_core", {}), st.get("eval", {})
    rows.append(f"| {name} | {t.get('nodes')} | {t['fwd']:.0e} | {t['gbit']}/{t['grads']} ({t['gworst']:.0e}) | {t['buf']:.0e} | {e['fwd']:.0e} "
                f"| {t['adam_py']:.0e} | {t['adam_lt']:.0e} | {c['fwd']:.0e} | {c['gbit']}/{c['grads']} ({c['gworst']:.0e}) | {c['adam_py']:.0e} |")
print("| model | nodes (train IR) | fwd | grads bitwise (worst rel) | BN buffers | eval fwd | Adam, PyTorch update | Adam, libtorch Adam "
      "| core IR fwd | core IR grads bitwise (worst rel) | core IR Adam, PyTorch update |")
print("|" + "---|" * 11)
print("\n".join(rows).replace("0e+00", "0"))
