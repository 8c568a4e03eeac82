"""The chart's dev-store lifecycle Job: its script, run as the Job runs it, against a real S3 server (SeaweedFS,
the dev store's server) leaves each bucket with a rule aborting incomplete multipart uploads, and keeps the
bucket's other rules."""

from __future__ import annotations

import os
import subprocess
import sys

from deploy_check import objects, read_values, render


def _job_container() -> dict:
    (job,) = [o for o in objects(render(read_values("ci/dev-values.yaml")))
              if o["kind"] == "Job" and o["metadata"]["name"] == "kuberlhf-s3-lifecycle"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def test_lifecycle_job_sets_the_abort_rule_and_keeps_other_rules(s3_server, s3_bucket, tmp_path):
    client = s3_server.client(s3_server.admin)
    other = {"ID": "expire-scratch", "Status": "Enabled", "Filter": {"Prefix": "scratch/"},
             "Expiration": {"Days": 7}}
    client.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration={"Rules": [other]})
    container = _job_container()
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env = {**os.environ, **plain, **s3_server.env(s3_server.admin), "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
           "BUCKETS": s3_bucket, "HOME": str(tmp_path)}
    for _ in range(2):  # a rerun (helm upgrade) leaves the same rules
        proc = subprocess.run([sys.executable, *container["command"][1:], *container["args"]], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    rules = {r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]}
    assert set(rules) == {"expire-scratch", "abort-incomplete-multipart-uploads"}
    assert rules["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert rules["abort-incomplete-multipart-uploads"]["Status"] == "Enabled"
    assert f"{s3_bucket}: abort incomplete multipart uploads after 1 day" in proc.stdout


def test_lifecycle_job_fails_on_a_missing_bucket(s3_server, s3_bucket, tmp_path):
    container = _job_container()
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env = {**os.environ, **plain, **s3_server.env(s3_server.admin), "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
           "BUCKETS": "no-such-bucket-x", "HOME": str(tmp_path), "WAIT_S": "5"}
    proc = subprocess.run([sys.executable, *container["command"][1:], *container["args"]], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no-such-bucket-x" in proc.stderr
