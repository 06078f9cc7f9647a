"""The CI integrations, run as far as this machine allows: the GitHub Action's steps (action.yml) and the
GitLab job (ci/gitlab-ci.yml) run with bash in a temporary project, and the pre-commit hook
(.pre-commit-hooks.yaml) runs through `pre-commit try-repo`. Needs PyYAML and pre-commit (./dev python
provides both) and builds trainlint in release mode (the action's own build step).

    ./dev python          # runs these after the exporter's tests
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo"
HEALTHY = REPO / "fixtures" / "torch_versions" / "torch-2.13" / "script"
CACHE = Path(os.environ.get("TRAINLINT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trainlint")


def project(tmp: Path, source: Path) -> Path:
    """A user's repository: the audit folder's files at its root."""
    work = tmp / "project"
    shutil.copytree(source, work)
    return work


class GitHubAction(unittest.TestCase):
    """Runs each `run:` step of the composite action with bash, with the environment GitHub gives it
    (GITHUB_OUTPUT, GITHUB_PATH, RUNNER_OS) and `${{ … }}` replaced as the runner would; `uses:` steps
    (the caches) are checked for their keys, not run."""

    def setUp(self):
        self.action = yaml.safe_load((REPO / "action.yml").read_text())

    def test_declares_a_composite_action_with_path_and_output_format(self):
        self.assertEqual(self.action["runs"]["using"], "composite")
        for name in ("path", "output-format", "output-file", "fail-on", "args"):
            self.assertIn("default", self.action["inputs"][name], name)
        caches = [s for s in self.action["runs"]["steps"] if s.get("uses", "").startswith("actions/cache@")]
        paths = [c["with"]["path"] for c in caches]
        self.assertIn("~/.cache/trainlint/libtorch-2.13.0-cpu", paths)
        self.assertIn("${{ github.action_path }}/target", paths)

    def run_action(self, work: Path, inputs: dict) -> tuple[dict, dict]:
        """Every step in order; returns the step outputs and the last step's exit code per step id."""
        inputs = {k: str(v.get("default", "")) for k, v in self.action["inputs"].items()} | inputs
        outputs: dict = {}
        codes: dict = {}
        for i, step in enumerate(self.action["runs"]["steps"]):
            if "uses" in step:
                for value in step.get("with", {}).values():
                    self.expand(str(value), inputs, outputs)  # every expression must resolve
                continue
            out_file = work.parent / f"output-{i}"
            out_file.write_text("")
            env = {k: self.expand(str(v), inputs, outputs) for k, v in step.get("env", {}).items()}
            env = {**os.environ, **env, "GITHUB_OUTPUT": str(out_file), "GITHUB_PATH": str(work.parent / "path"),
                   "RUNNER_OS": "Linux", "GITHUB_WORKSPACE": str(work)}
            self.assertEqual(step["shell"], "bash")
            p = subprocess.run(["bash", "-e", "-c", self.expand(step["run"], inputs, outputs)], cwd=work, env=env,
                               capture_output=True, text=True, timeout=3000)
            codes[step.get("id", i)] = p.returncode
            if step.get("id") != "check":
                self.assertEqual(p.returncode, 0, f"step {step.get('id', i)}: {p.stderr[-2000:]}")
            outputs[step.get("id", i)] = dict(
                line.split("=", 1) for line in out_file.read_text().splitlines() if "=" in line
            )
        return outputs, codes

    def expand(self, text: str, inputs: dict, outputs: dict) -> str:
        def value(m):
            expr = m.group(1).strip()
            if expr == "github.action_path":
                return str(REPO)
            if expr == "runner.os":
                return "Linux"
            if expr.startswith("inputs."):
                return inputs[expr[len("inputs."):]]
            step = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr)
            if step:
                return outputs[step.group(1)][step.group(2)]
            raise AssertionError(f"unknown expression ${{{{ {expr} }}}}")

        return re.sub(r"\$\{\{(.*?)\}\}", value, text)

    def test_steps_build_and_audit_with_sarif_and_annotations(self):
        with tempfile.TemporaryDirectory() as tmp:
            work = project(Path(tmp), DEMO)
            outputs, codes = self.run_action(work, {"output-format": "sarif", "output-file": "trainlint.sarif"})
            self.assertTrue(outputs["key"]["build"].startswith("trainlint-build-Linux-"))
            self.assertEqual(codes["check"], 1)  # the demo has findings: the step fails the job
            self.assertEqual(outputs["check"]["exit-code"], "1")
            sarif = json.loads((work / "trainlint.sarif").read_text())
            self.assertEqual(sarif["version"], "2.1.0")
            self.assertGreaterEqual(len(sarif["runs"][0]["results"]), 5)
            self.assertEqual((Path(tmp) / "path").read_text().strip(), str(REPO / "target" / "release"))

            # Annotations on stdout, extra arguments with spaces between them, a clean selection.
            outputs, codes = self.run_action(work, {"args": "--select double-activation  --no-timings"})
            self.assertEqual((codes["check"], outputs["check"]["exit-code"]), (0, "0"))


class GitLab(unittest.TestCase):
    """Runs the job's before_script and script lines with bash in a temporary project, cloning
    trainlint from a bare copy of this repository at HEAD (so: the committed source)."""

    def test_job_produces_junit_and_code_quality(self):
        job = yaml.safe_load((REPO / "ci" / "gitlab-ci.yml").read_text())["trainlint"]
        self.assertEqual(job["artifacts"]["reports"], {"junit": "trainlint-junit.xml", "codequality": "gl-code-quality.json"})
        with tempfile.TemporaryDirectory() as tmp:
            work = project(Path(tmp), DEMO)
            bare = Path(tmp) / "trainlint.git"
            subprocess.run(["git", "clone", "--quiet", "--bare", str(REPO), str(bare)], check=True)
            head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
            subprocess.run(["git", "-C", str(bare), "branch", "-f", "ci-test", head], check=True)
            env = {**os.environ, "CI_PROJECT_DIR": str(work)}
            for k, v in job["variables"].items():
                env[k] = os.path.expandvars(str(v)) if "$CI_PROJECT_DIR" not in str(v) else str(v).replace("$CI_PROJECT_DIR", str(work))
            # A warm cache, as a second pipeline has: the machine's libtorch and this checkout's build.
            # The read-only checks keep the two audits short; the gate still finds the demo's errors.
            env |= {"TRAINLINT_REPO": str(bare), "TRAINLINT_REF": "ci-test", "TRAINLINT_PATH": ".",
                    "TRAINLINT_ARGS": "--select init-std,output-range,double-activation",
                    "TRAINLINT_CACHE": str(CACHE), "CARGO_TARGET_DIR": str(REPO / "target")}
            for line in job["before_script"] + job["script"]:
                p = subprocess.run(["bash", "-e", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=3000)
                gate = line.rstrip().endswith("gl-code-quality.json")
                self.assertIn(p.returncode, (0, 1) if gate else (0,), f"{line}: {p.stderr[-2000:]}")
            junit = (work / "trainlint-junit.xml").read_text()
            self.assertIn('<testcase classname="trainlint.model" name="init-std"', junit)
            quality = json.loads((work / "gl-code-quality.json").read_text())
            self.assertTrue(quality and all({"check_name", "fingerprint", "severity", "location"} <= q.keys() for q in quality))


class PreCommit(unittest.TestCase):
    """`pre-commit try-repo` with this repository's hooks in a temporary git repository: the hook
    fails on the demo's findings and passes on a healthy exported folder."""

    def try_repo(self, source: Path) -> subprocess.CompletedProcess:
        binary = REPO / "target" / "release" / "trainlint"
        if not binary.exists():
            binary = REPO / "target" / "debug" / "trainlint"
        with tempfile.TemporaryDirectory() as tmp:
            work = project(Path(tmp), source)
            git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
            subprocess.run(["git", "init", "--quiet", str(work)], check=True)
            subprocess.run([*git, "-C", str(work), "add", "."], check=True)
            subprocess.run([*git, "-C", str(work), "commit", "--quiet", "-m", "setup"], check=True)
            env = {**os.environ, "PATH": f"{binary.parent}:{os.environ['PATH']}", "PRE_COMMIT_HOME": str(Path(tmp) / "pc")}
            return subprocess.run(
                [os.sys.executable, "-m", "pre_commit", "try-repo", str(REPO), "trainlint", "--all-files"],
                cwd=work, env=env, capture_output=True, text=True, timeout=1200,
            )

    def test_hook_fails_on_findings_and_passes_a_healthy_setup(self):
        hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
        self.assertEqual([h["id"] for h in hooks], ["trainlint"])
        bad = self.try_repo(DEMO)
        self.assertEqual(bad.returncode, 1, bad.stdout + bad.stderr)
        self.assertRegex(bad.stdout, r"trainlint\.+Failed")
        self.assertIn("error[init-std/std-out-of-band]", bad.stdout)
        good = self.try_repo(HEALTHY)
        self.assertEqual(good.returncode, 0, good.stdout + good.stderr)
        self.assertRegex(good.stdout, r"trainlint\.+Passed")


if __name__ == "__main__":
    unittest.main()
