"""`make demo`: leadpost end to end on the embedded default (SQLite), against a local receiver.

Fresh AIRFLOW_HOME in ./airflow_home → airflow db migrate → leadpost db init → import
dags/sample_leads.csv → start a receiver on 127.0.0.1 → the untested action sends nothing →
leadpost test → airflow dags test → what the receiver got and leadpost status → run again: 0 new.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / "airflow_home"
BIN = Path(sys.executable).parent
DAG_ID = "leadpost_demo"

TRIGGERS = """\
# Written by `make demo`: one trigger, one action posting to the local receiver.
triggers:
  - id: demo
    schedule: "@daily"
    timezone: America/Sao_Paulo
    filters:
      tags_none: [unsubscribed]
    actions:
      - id: crm
        url: {url}/meupost
        method: POST
        body: form
        params: {{token: "0132456789"}}
        fields:
          email: email
          name: nome
          phone: telefone
          city: cidade
          state: estado
          birth_date: nascimento
        auth_conn_id: demo_auth
        parallelism: 2
        concurrency: 32
"""


def step(title: str) -> None:
    print(f"\n\033[1;36m==> {title}\033[0m", flush=True)


def run(
    *cmd: str, env: dict[str, str], check: bool = True, quiet: bool = False
) -> subprocess.CompletedProcess[str]:
    print(f"$ {' '.join(cmd)}", flush=True)
    result = subprocess.run(cmd, env=env, text=True, capture_output=quiet, check=False)
    if check and result.returncode != 0:
        if quiet:
            print(result.stdout[-3000:], result.stderr[-3000:])
        raise SystemExit(f"demo failed at: {' '.join(cmd)} (exit {result.returncode})")
    return result


def stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/__receiver/stats", timeout=10) as response:  # loopback only
        return json.load(response)


def start_receiver(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port_file = Path(tempfile.mkdtemp()) / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.receiver", "--port", "0", "--port-file", str(port_file)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        if port_file.exists() and port_file.read_text().strip():
            return proc, f"http://127.0.0.1:{port_file.read_text().strip()}"
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the local receiver did not start")


def main() -> int:
    started = time.monotonic()
    step(f"Fresh AIRFLOW_HOME at {HOME}")
    shutil.rmtree(HOME, ignore_errors=True)
    HOME.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        # the receiver lives on loopback, which leadpost refuses unless allowed
        "AIRFLOW__LEADPOST__ALLOWED_NETWORKS": "127.0.0.1/32",
        "LEADPOST_TRIGGERS": str(HOME / "triggers.yaml"),
        # the auth connection: header mode, key X-Api-Key, value masked everywhere
        "AIRFLOW_CONN_DEMO_AUTH": json.dumps(
            {
                "conn_type": "leadpost",
                "login": "X-Api-Key",
                "password": "demo-secret-value",
                "extra": {"auth_mode": "header"},
            }
        ),
        "PYTHONPATH": str(REPO),
    }
    receiver, url = start_receiver(env)
    try:
        step("Migrate the Airflow metadata database")
        run("airflow", "db", "migrate", env=env, quiet=True)
        step("Create the lead store and import the sample leads")
        run("leadpost", "db", "init", env=env)
        run("leadpost", "leads", "import", str(REPO / "dags" / "sample_leads.csv"), env=env)
        step(f"Local receiver listening at {url}; writing the demo trigger")
        (HOME / "triggers.yaml").write_text(TRIGGERS.format(url=url))
        print((HOME / "triggers.yaml").read_text())
        run("leadpost", "validate", env=env)

        step("A new action is untested: the DAG's gate lets nothing through")
        run("leadpost", "status", env=env)
        run("airflow", "dags", "test", DAG_ID, env=env, quiet=True, check=False)
        print(f"receiver got {stats(url)['count']} request(s) — the leads stay pending")

        step("Test execution against the real endpoint (secrets masked)")
        run("leadpost", "test", "demo.crm", env=env)
        base = stats(url)["count"]

        step(f"Run the trigger DAG: airflow dags test {DAG_ID}")
        t0 = time.monotonic()
        run("airflow", "dags", "test", DAG_ID, env=env, quiet=True)
        took = time.monotonic() - t0
        got = stats(url)
        print(
            f"receiver got {got['count'] - base} lead(s) in {took:.1f} s "
            f"({got['unique_idempotency_keys']} unique Idempotency-Keys, {got['duplicates']} duplicates)"
        )
        if got["last"]:
            sample = got["last"][-1]
            print(f"last request: {sample['method']} {sample['path']}  body: {sample.get('body', '')[:200]}")
        run("leadpost", "status", env=env)

        step("Run it again: nothing is sent twice")
        before = stats(url)["count"]
        run("airflow", "dags", "test", DAG_ID, env=env, quiet=True)
        print(f"second run sent {stats(url)['count'] - before} new request(s)")
        run("leadpost", "status", env=env)
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    step(f"Demo finished in {time.monotonic() - started:.0f} s. Airflow home: {HOME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
