"""Dockerfile.jetson, read with BuildKit's own parser (the `dockerfile` package) and checked by what its parts do:
the files it copies exist, every pip install is pinned by the constraints file it copies first, no build step
needs a GPU, its shell steps parse, and the image's entrypoint with the image's environment starts the real daemon
that its HEALTHCHECK command then finds healthy (and unhealthy once stopped). Docker itself and arm64 are not
available here (docs/jetson.md says what that leaves untested)."""

from __future__ import annotations

import ast
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import dockerfile

from edge.config import ApiConfig
from runtime.loaders.tensorrt.cache import default_cache_dir
from tests.conftest import free_port
from tests.packaging.health import reaped

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.jetson"
DOC = ROOT / "docs" / "jetson.md"
sys.path.insert(0, str(ROOT / "deploy" / "jetson"))
import lock  # noqa: E402  (deploy/jetson/lock.py: the constraints file's maker)

GPU_IMPORTS = {"pycuda.driver", "pycuda.autoinit", "pycuda.gpuarray", "tensorrt", "torch", "cupy"}


def commands(name: str) -> list[dockerfile.Command]:
    return [c for c in dockerfile.parse_file(str(DOCKERFILE)) if c.cmd.upper() == name.upper()]


def env() -> dict[str, str]:
    """The image's ENV, in order (later values see earlier ones: only $PATH is referenced)."""
    out: dict[str, str] = {}
    for c in commands("ENV"):
        for k, v in zip(c.value[::2], c.value[1::2]):
            out[k] = v.replace("$PATH", out.get("PATH", "/usr/bin:/bin"))
    return out


def run_steps() -> list[str]:
    """Each RUN's shell command split at `&&` into the steps it chains."""
    return [step.strip() for c in commands("RUN") for step in c.value[0].split(" && ")]


def run_argvs() -> list[tuple[dict[str, str], list[str]]]:
    """Each RUN step as the shell runs it: (the VAR=value assignments before the command, the command's argv)."""
    out = []
    for step in run_steps():
        argv = shlex.split(step)
        assigned: dict[str, str] = {}
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
            name, value = argv.pop(0).split("=", 1)
            assigned[name] = value
        out.append((assigned, argv))
    return out


def option(argv: list[str], name: str) -> str | None:
    """The value of `name` in argv (`--name value`), None if absent."""
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def test_base_image_is_pinned_and_documented():
    (base,) = commands("FROM")
    image = base.value[0]
    assert re.fullmatch(r"nvcr\.io/nvidia/l4t-jetpack:r\d+\.\d+\.\d+", image), image
    assert image in DOC.read_text(), "docs/jetson.md names another base image"


def test_pycuda_builds_with_the_cuda_toolchain():
    """pycuda compiles against CUDA_ROOT's headers with nvcc on PATH, both set by an ENV before its install."""
    e = env()
    assert e["CUDA_ROOT"] == "/usr/local/cuda" and "/usr/local/cuda/bin" in e["PATH"].split(":")
    (assigned,) = [a for a, argv in run_argvs() if argv[:2] == ["pip", "install"] and "pycuda" in argv]
    assert assigned.get("LIBRARY_PATH") == "/usr/local/cuda/lib64/stubs"  # link against the driver stub, no driver
    # the venv sees the system site-packages (apt's TensorRT bindings) and its pip is the first on PATH
    (venv,) = [argv for _, argv in run_argvs() if argv[1:3] == ["-m", "venv"]]
    assert venv[0] == "python3.10" and "--system-site-packages" in venv
    assert e["PATH"].split(":")[0] == f"{venv[-1]}/bin"
    (apt,) = [argv for _, argv in run_argvs() if argv[:2] == ["apt-get", "install"]]
    assert {"python3-libnvinfer", "python3.10-venv"} <= set(apt)


def test_every_copied_file_exists_and_every_package_is_copied():
    sources = [s for c in commands("COPY") for s in c.value[:-1]]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
    packages = {line.strip(' "*,') for line in
                re.search(r"include = \[(.*?)\]", (ROOT / "pyproject.toml").read_text()).group(1).split(",")}
    assert packages <= set(sources), f"packages not copied: {packages - set(sources)}"


def test_every_pip_install_is_pinned_by_the_constraints_file():
    copied = {c.value[-1]: c.value[0] for c in commands("COPY")}
    installs = [s for s in run_steps() if re.search(r"\bpip install\b", s)]
    assert installs
    for step in installs:
        argv = shlex.split(step.split("pip install", 1)[1])
        assert "-c" in argv, f"unpinned: {step}"
        target = argv[argv.index("-c") + 1]
        assert copied.get(target) == "deploy/jetson/constraints.txt", f"{target} is not the copied constraints file"
        pins = lock.read_pins(ROOT / copied[target])
        named = [a for a in argv[argv.index("-c") + 2:] if not a.startswith("-") and not a.startswith(".")]
        for name in named:
            assert name.lower() in pins, f"{name} is installed without a pin"
    assert lock.missing_pins() == [], "pyproject.toml changed: run python deploy/jetson/lock.py"


def test_constraints_check_fails_on_a_missing_pin(tmp_path: Path):
    """lock.missing_pins can fail: a constraints file without numpy, or with a numpy outside pyproject's range."""
    text = lock.OUT.read_text()
    without = tmp_path / "without.txt"
    without.write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("numpy==")))
    assert any(m.startswith("numpy") for m in lock.missing_pins(without))
    outside = tmp_path / "outside.txt"
    outside.write_text(re.sub(r"numpy==\S+", "numpy==2.4.0", text))
    assert any("numpy" in m and "2.4.0" in m for m in lock.missing_pins(outside))


def python_snippets() -> list[str]:
    snippets = []
    for step in run_steps():
        argv = shlex.split(step)
        if "-c" in argv and Path(argv[0]).name.startswith("python"):
            snippets.append(argv[argv.index("-c") + 1])
    return snippets


def test_no_build_step_needs_the_gpu():
    """A build has no GPU and no driver library unless Docker's default runtime is nvidia: nothing imports a GPU
    library at build time."""
    for code in python_snippets():
        imported = set()
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        assert not imported & GPU_IMPORTS, f"build step imports {imported & GPU_IMPORTS}: {code}"


def test_build_check_of_the_gpu_packages_fails_when_they_are_missing():
    """The build's installed-check (find_spec, no import) run here, where neither package exists: it fails and
    names both, so a build without TensorRT's bindings or pycuda stops."""
    (check,) = [c for c in python_snippets() if "find_spec" in c]
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert r.returncode == 1 and "tensorrt" in r.stderr and "pycuda" in r.stderr


def test_run_steps_are_valid_shell():
    for c in commands("RUN"):
        r = subprocess.run(["bash", "-n", "-c", c.value[0]], capture_output=True, text=True)
        assert r.returncode == 0, f"line {c.start_line}: {r.stderr}"


def test_engine_cache_is_a_volume_and_the_default_cache():
    (vol,) = commands("VOLUME")
    e = env()
    assert e["SHADOWLINE_ENGINE_CACHE"] in vol.value
    old = os.environ.get("SHADOWLINE_ENGINE_CACHE")
    os.environ["SHADOWLINE_ENGINE_CACHE"] = e["SHADOWLINE_ENGINE_CACHE"]
    try:
        assert str(default_cache_dir()) == e["SHADOWLINE_ENGINE_CACHE"]
    finally:
        if old is None:
            del os.environ["SHADOWLINE_ENGINE_CACHE"]
        else:
            os.environ["SHADOWLINE_ENGINE_CACHE"] = old
    (user,) = commands("USER")
    name = user.value[0]
    (useradd,) = [argv for _, argv in run_argvs() if argv[0] == "useradd"]
    assert useradd[-1] == name and option(useradd, "--gid") == name and "--system" in useradd
    (chown,) = [argv for _, argv in run_argvs() if argv[0] == "chown"]
    assert chown[1:3] == ["-R", f"{name}:{name}"]
    assert all(Path(v).is_relative_to(chown[3]) for v in vol.value)  # the volumes are the user's to write


def healthcheck(port: int) -> subprocess.CompletedProcess:
    """The image's HEALTHCHECK command, run the way Docker runs CMD-SHELL (`/bin/sh -c`), with the image's PATH
    (python from this checkout's venv in place of /opt/shadowline/venv) and the test daemon's port."""
    (hc,) = commands("HEALTHCHECK")
    kind, cmd = hc.value
    assert kind == "CMD"
    assert f"127.0.0.1:{ApiConfig().port}/" in cmd, "the health check polls another port than the daemon's default"
    path = env()["PATH"].replace("/opt/shadowline/venv/bin", str(Path(sys.executable).parent))
    return subprocess.run(["/bin/sh", "-c", cmd.replace(f":{ApiConfig().port}/", f":{port}/")],
                          env={"PATH": path}, capture_output=True, text=True, timeout=30)


def test_entrypoint_with_the_image_env_starts_a_daemon_the_healthcheck_accepts(tmp_path: Path, bundles, keys):
    (entry,) = commands("ENTRYPOINT")
    copied = {c.value[-1]: c.value[0] for c in commands("COPY")}
    script = ROOT / copied[entry.value[0]]
    port = free_port()
    b = bundles["pcb-aoi"]
    config = (f"device_id: jetson-07\nbundles_dir: {b.parent}\ntrust_store: {keys['trust']}\n"
              f"release:\n  name: pcb\n  mode: shadow\n  stages:\n    - role: verify\n      bundle: {b.name}\n"
              f"store:\n  path: {tmp_path / 'device.db'}\nretention:\n  dir: {tmp_path / 'images'}\n"
              f"api:\n  port: {port}\n")
    image_env = env()
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWLINE_")}
    run_env.update({k: v for k, v in image_env.items() if k.startswith(("SHADOWLINE_", "PYTHON"))})
    # the image's paths, moved into the test's directory
    run_env.update(SHADOWLINE_ENGINE_CACHE=str(tmp_path / "engines"), SHADOWLINE_STATE_DIR=str(tmp_path / "state"),
                   SHADOWLINE_CONFIG_YAML=config,
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert healthcheck(port).returncode != 0, "healthy before the daemon started"
    p = subprocess.Popen(["bash", str(script)], env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    with reaped(p):
        deadline = time.monotonic() + 60
        while healthcheck(port).returncode != 0:
            assert p.poll() is None, p.communicate()[1]
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    assert p.returncode == 0
    assert healthcheck(port).returncode != 0, "healthy after the daemon stopped"


def test_docs_name_every_setting_the_entrypoint_reads():
    script = (ROOT / "deploy" / "jetson" / "entrypoint.sh").read_text()
    doc = DOC.read_text()
    for var in sorted(set(re.findall(r"\$\{?(SHADOWLINE_[A-Z_]+)", script))):
        assert var in doc, f"docs/jetson.md does not mention {var}"


def test_no_emulation_route_is_claimed():
    """The image cannot be built under arm64 emulation on another machine (docs/jetson.md says why): neither the
    Dockerfile nor the docs offer it."""
    for text in (DOCKERFILE.read_text(), DOC.read_text()):
        for line in text.splitlines():
            if re.search(r"emulat|qemu|binfmt|buildx.*--platform", line, re.I):
                assert re.search(r"not|cannot|no ", line, re.I), f"offers emulation: {line.strip()}"
