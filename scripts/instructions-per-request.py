#!/usr/bin/env python3
"""User-space instructions per request, counted by callgrind: repeatable on a shared machine.

Starts the load harness's mock provider and one proxy (keygate, or the bare forwarder) under
`valgrind --tool=callgrind` on 127.0.0.1, sends N keep-alive requests one at a time, stops
the proxy, and reads the instruction total. Two runs (300 and 3300 requests) are subtracted,
so start-up and shutdown cancel out and what is left is the cost of 3000 requests; the
median of three such pairs is printed.

    cargo build --release --bins
    scripts/instructions-per-request.py keygate json    # or: bare json, keygate sse, bare sse
    scripts/instructions-per-request.py keygate json json   # keygate with --log-format json

Set KEEP=DIR to keep the callgrind output files (for `callgrind_annotate`). SESSION=1 sends
one conversation (`prompt_cache_key` in every body: session affinity looks it up, finds it
kept and records it); AFFINITY=off adds `[rotation] affinity = "off"` (the same bodies, no
affinity work): the two together give what affinity costs a request.

Kernel time (the socket syscalls, most of a request's CPU) is not counted: this measures
what keygate adds in user space, not the whole CPU ratio (the load harness does that).
"""
import glob
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
PORT = 18811


def run(target, n, mode, work, log_format="text"):
    mock = subprocess.Popen([os.path.join(BIN, "keygate-load"), "--mock", "--listen", "127.0.0.1:0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    upstream = mock.stdout.readline().decode().split()[1]
    with open(os.path.join(work, "kg.toml"), "w") as f:
        f.write(f'[providers.openai]\nbase_url = "http://{upstream}"\n')
        if os.environ.get("AFFINITY") == "off":
            f.write('[rotation]\naffinity = "off"\n')
    out = os.path.join(work, f"callgrind.{target}.{n}")
    for f in glob.glob(out):
        os.remove(f)
    if target == "bare":
        cmd = [os.path.join(BIN, "keygate-load"), "--bare-forwarder", "--listen", f"127.0.0.1:{PORT}",
               "--upstream", upstream]
    else:
        cmd = [os.path.join(BIN, "keygate"), "--config", os.path.join(work, "kg.toml"), "--state-dir", work,
               "--log-format", log_format, "serve", "--listen", f"127.0.0.1:{PORT}"]
    env = {"OPENAI_API_KEY": "sk-ok-instructions-0000", "RUST_LOG": "info", "PATH": os.environ["PATH"]}
    proxy = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + cmd, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(work, "proxy.log"), "w"))
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
                c.request("GET", "/healthz")
                c.getresponse().read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("the proxy did not start")
        body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}]}'
        if os.environ.get("SESSION") == "1":
            body = body[:-1] + b',"prompt_cache_key":"conv-instructions-1"}'
        headers = {"content-type": "application/json", "x-load-mode": mode, "accept": "application/json",
                   "user-agent": "OpenAI/Python 1.99.0", "x-stainless-lang": "python"}
        for _ in range(n):
            c.request("POST", "/openai/v1/chat/completions", body=body, headers=headers)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                sys.exit(f"status {r.status}")
        c.close()
    finally:
        if target == "bare":
            proxy.stdin.close()
        else:
            proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=300)
        mock.stdin.close()
        mock.wait(timeout=30)
    for line in open(out):
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    sys.exit("no totals in " + out)


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "keygate"
    mode = sys.argv[2] if len(sys.argv) > 2 else "json"
    log_format = sys.argv[3] if len(sys.argv) > 3 else "text"
    # The runtime's idle loop (parking, timer wheel) moves a run by about ±2 %: the median
    # of three is reported, with the spread.
    per = []
    with tempfile.TemporaryDirectory() as tmp:
        work = os.environ.get("KEEP") or tmp
        os.makedirs(work, exist_ok=True)
        for _ in range(3):
            a = run(target, 300, mode, work, log_format)
            b = run(target, 3300, mode, work, log_format)
            per.append((b - a) / 3000)
    per.sort()
    logs = f", {log_format} logs" if target == "keygate" else ""
    print(f"{target} {mode}{logs}: {per[1]:.0f} instructions per request "
          f"(median of 3; {per[0]:.0f}–{per[2]:.0f})")


if __name__ == "__main__":
    main()
