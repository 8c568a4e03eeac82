"""Put a lifecycle rule aborting incomplete multipart uploads on each bucket of the dev store.

Run by the chart's kuberlhf-s3-lifecycle Job (post-install, post-upgrade) with AWS_ENDPOINT_URL_S3, the
store's credentials, BUCKETS (comma-separated) and ABORT_INCOMPLETE_MULTIPART_DAYS. The bucket's other
rules are kept; a rerun replaces only this one. Waits up to WAIT_S seconds for the store to answer.
"""
import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

RULE_ID = "abort-incomplete-multipart-uploads"
days = int(os.environ["ABORT_INCOMPLETE_MULTIPART_DAYS"])
buckets = [b for b in os.environ["BUCKETS"].split(",") if b]
s3 = boto3.client("s3", region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
rule = {"ID": RULE_ID, "Status": "Enabled", "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days}}


def current_rules(bucket):
    try:
        return s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as err:
        if err.response["Error"]["Code"] == "NoSuchLifecycleConfiguration":
            return []
        raise


deadline = time.monotonic() + float(os.environ.get("WAIT_S", "300"))
for bucket in buckets:
    while True:
        try:
            rules = [r for r in current_rules(bucket) if r.get("ID") != RULE_ID]
            s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [*rules, rule]})
            break
        except (ClientError, EndpointConnectionError) as err:  # the store may still be starting
            if time.monotonic() > deadline:
                print(f"{bucket}: {err}", file=sys.stderr)
                sys.exit(1)
            time.sleep(5)
    print(f"{bucket}: abort incomplete multipart uploads after {days} day{'s' if days != 1 else ''}")
