"""Every shell and Python block of README.md and docs/*.md, run as written against a server, so
that the documentation cannot drift from the product.

A block is run according to the HTML comment on the line before it:

| comment                              | how it runs                                            |
|--------------------------------------|--------------------------------------------------------|
| (none)                               | sh: one bash script (set -e) against a running server  |
| `recipe: transcript`                 | sh: its `$ ` lines, as a script (the server's own line  |
|                                      | `tsemu serve` is the test's server)                    |
| `recipe: python through tsemu run`   | python: a script run by `tsemu run -- python`          |
| `recipe: pytest`                     | python: a test file run by pytest (the plugin)         |
| `recipe: docker ...`                 | in order, per file, with an engine (marked `docker`)   |
| `recipe: skip: REASON`               | not run, said why                                      |

The server for the blocks that are not containers' serves the embedded default machine
(`--admin all`), with a background storm of 5 exits a second for the listeners. A block of
another language (toml, go, java) is not a recipe.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clients.harness import stop_process

ROOT = Path(__file__).parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- recipe: (?P<kind>[^\n]*?) -->\n)?^```(?P<lang>sh|python)\n"
                   r"(?P<body>.*?)^```$", re.S | re.M)
KINDS = ("run", "transcript", "python through tsemu run", "pytest", "docker", "skip")


@dataclass(frozen=True)
class Recipe:
    document: Path
    line: int
    kind: str
    lang: str
    body: str

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def recipes() -> list[Recipe]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("lang")) + 1
            found.append(Recipe(document, line, match.group("kind") or "run",
                                match.group("lang"), match.group("body")))
    return found


def test_every_recipe_says_how_it_runs() -> None:
    assert len(recipes()) >= 8
    for recipe in recipes():
        assert recipe.kind.split(":")[0].split()[0] in ("run", "transcript", "python",
                                                         "pytest", "docker", "skip"), recipe


def environment(socket_path: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TSEMU_", "LD_PRELOAD"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    if socket_path is not None:
        env["TSEMU_SOCKET"] = str(socket_path)
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`tsemu serve` on the default machine, and a storm of exits for the listeners."""
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="tsr", dir="/tmp"))
    socket_path = directory / "genl.sock"
    env = environment(socket_path)
    proc = subprocess.Popen([sys.executable, "-m", "tsemu", "serve", "--admin", "all"], env=env,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    storm = None
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("tsemu: listening on"), line
        storm = subprocess.Popen([sys.executable, "-m", "tsemu", "ctl", "storm", "--rate", "5",
                                  "--duration", "10m"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        yield socket_path
    finally:
        for running in (storm, proc):
            if running is not None:
                stop_process(running)
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)


def bash(script: str, env: dict[str, str], timeout: float = 120
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-e", "-c", script], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


LOCAL = [r for r in recipes() if not r.kind.startswith("docker")]


@pytest.mark.parametrize("recipe", LOCAL, ids=[r.name for r in LOCAL])
def test_recipe(recipe: Recipe, server: Path, tmp_path: Path) -> None:
    env = environment(server)
    if recipe.kind.startswith("skip"):
        pytest.skip(f"{recipe.name}: {recipe.kind}")
    if recipe.kind == "run":
        assert recipe.lang == "sh", recipe
        done = bash(recipe.body, env)
    elif recipe.kind == "transcript":
        commands = [line[2:] for line in recipe.body.splitlines() if line.startswith("$ ")]
        script = "\n".join(c for c in commands if not c.startswith("tsemu serve"))
        done = bash(script, env)
    elif recipe.kind == "python through tsemu run":
        script = tmp_path / "recipe.py"
        script.write_text(recipe.body)
        done = subprocess.run([sys.executable, "-m", "tsemu", "run", "--", sys.executable,
                               str(script)], env=env, capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
    elif recipe.kind == "pytest":
        (tmp_path / "test_recipe.py").write_text(recipe.body)
        shutil.copytree(ROOT / "examples", tmp_path / "examples")
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               str(tmp_path / "test_recipe.py")], env=environment(None),
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
    else:
        raise AssertionError(f"{recipe.name}: unknown kind {recipe.kind!r}")
    assert done.returncode == 0, f"{recipe.name}:\n{done.stdout}\n{done.stderr}"


# -- the containers' recipes --------------------------------------------------------------------

DOCKER_DOCUMENTS = sorted({r.document for r in recipes() if r.kind.startswith("docker")})


def compose_command() -> str | None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return "docker compose"
    return "docker-compose" if shutil.which("docker-compose") else None


@pytest.mark.docker
@pytest.mark.parametrize("document", DOCKER_DOCUMENTS,
                         ids=[str(d.relative_to(ROOT)) for d in DOCKER_DOCUMENTS])
def test_container_recipes(document: Path, docker_image: str, tmp_path: Path) -> None:
    """A document's container blocks, in order (each may use what the one before started),
    as written but for the base image (PYTHON_IMAGE where no registry is reachable) and
    `docker-compose` standing in for `docker compose` where the plugin is missing."""
    from tests.conftest import LOCAL_BASE_IMAGE
    from tsemu.testing.image import image_id

    base = os.environ.get("TSEMU_PYTHON_IMAGE") or (
        LOCAL_BASE_IMAGE if image_id(LOCAL_BASE_IMAGE) else None)
    env = environment(None) | {"TESTCONTAINERS_RYUK_DISABLED": "true"}
    if base is not None:
        env["PYTHON_IMAGE"] = base
    try:
        for recipe in (r for r in recipes() if r.document == document
                       and r.kind.startswith("docker")):
            if recipe.lang == "python":
                script = tmp_path / "recipe.py"
                script.write_text(f"IMAGE = {docker_image!r}\n{recipe.body}")
                done = subprocess.run([sys.executable, str(script)], env=env,
                                      capture_output=True, text=True, timeout=300, cwd=ROOT)
            else:
                body = recipe.body
                if base is not None:
                    body = body.replace("docker build ",
                                        f"docker build --build-arg PYTHON_IMAGE={base} ")
                if "compose" in recipe.kind:
                    compose = compose_command()
                    if compose is None:
                        pytest.skip("docker: no `docker compose` or `docker-compose`")
                    body = body.replace("docker compose", compose)
                done = bash(body, env, timeout=300)
            assert done.returncode == 0, f"{recipe.name}:\n{done.stdout}\n{done.stderr}"
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", "tsemu"], capture_output=True, timeout=60)
        subprocess.run(["docker", "volume", "rm", "-f", "tsemu-run"], capture_output=True,
                       timeout=60)
