"""`aws`: Parsl HTEX whose worker pools run on EC2 instances (AWSProvider); one instance per block.

The AMI must provide ``process_worker_pool.py`` (or ``worker_init`` installs it), and instances
must reach the interchange, so ``address`` is usually the driver's public address.

``AWSProvider.__init__`` is not a constructor to call lightly: after checking that credentials are
configured (profile, key_file or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) it makes a boto3 client,
which resolves credentials (possibly over the network: SSO, assume-role, instance metadata), and
unless its state file names a VPC from an earlier run it *creates* one in the account: a
10.0.0.0/16 VPC, an internet gateway, a subnet per availability zone and a security group open to
SSH and ICMP. These stay after the run (Parsl deletes them only in an explicit ``teardown``), and the
state file lets later runs reuse them; by default it is ``<run_dir>/aws-<site>.json`` so a resumed
run reuses its VPC, and ``state_file`` can point at a shared file so every run does.

A dry run therefore builds a ``DryRunAWSProvider``: an AWSProvider subclass that runs Parsl's own
constructor and its local checks (credentials configured, profile exists, key file readable, state
file read) but makes no boto3 client, creates nothing and writes no state file; it records
``would_create_vpc`` instead and refuses to submit, so it can never be mistaken for a working one.

Certificates: an instance does not see the driver's run directory, where Parsl keeps the CurveZMQ
keys (fedgrid.executors.certs). AWSProvider sends the block's command as the instance's user data,
so the command carries the files a pool needs (the client's key pair and the interchange's public
key, never its secret key) in itself: it writes them, base64-decoded, into a private ``mktemp -d``
folder (0700, files 0600, removed when the command exits) and starts the pool with ``--cert_dir``
there. User data is readable by whoever may describe the instance's attributes in the account, and
from the instance; the client key it holds only lets a worker join this run's interchange.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

from pydantic import Field

from fedgrid.executors import certs, hpc
from fedgrid.executors.common import require


class Spec(hpc.RemoteHtexSpec):
    kind: Literal["aws"] = "aws"
    """Worker pools on EC2 instances (Parsl's HTEX with an AWSProvider; needs `fedgrid[aws]`)."""
    image_id: str
    """The AMI, with Python, Parsl and fedgrid (or installed by `worker_init`)."""
    instance_type: str = "t2.small"
    """The EC2 instance type."""
    region: str = "us-east-2"
    """The AWS region."""
    nodes_per_block: Literal[1] = 1
    """A block is one instance."""
    key_name: str | None = None
    """An EC2 key pair, for SSH into instances when debugging."""
    profile: str | None = None
    """A `~/.aws/config` profile; else `key_file`, else the `AWS_*` environment variables."""
    key_file: str | None = None
    """A JSON file with `AWSAccessKeyId` and `AWSSecretKey`."""
    iam_instance_profile_arn: str = ""
    """The IAM instance profile the instances get."""
    spot_max_bid: Annotated[float, Field(ge=0)] = 0.0
    """USD per hour for spot instances; `0` is on-demand."""
    state_file: str | None = None
    """VPC and instance ids kept between runs, so a resumed run reuses its VPC (unset:
    `<run_dir>/aws-<site>.json`)."""
    linger: bool = False
    """Leave the instances running after the run (you stop them)."""


def provider_kwargs(spec: Spec, state_file: str | None = None) -> dict[str, Any]:
    """AWSProvider's arguments as plain (YAML-able) values."""
    return {"image_id": spec.image_id, "instance_type": spec.instance_type, "region": spec.region,
            "key_name": spec.key_name, "profile": spec.profile, "key_file": spec.key_file,
            "iam_instance_profile_arn": spec.iam_instance_profile_arn, "spot_max_bid": spec.spot_max_bid,
            "state_file": spec.state_file or state_file, "linger": spec.linger, **hpc.block_kwargs(spec)}


@functools.cache
def dry_run_provider_class() -> type:
    from parsl.providers import AWSProvider

    class DryRunAWSProvider(AWSProvider):
        """AWSProvider's settings and local checks, without a boto3 client, a VPC or a state file."""

        would_create_vpc = False

        def initialize_boto_client(self) -> None:
            self.session = self.create_session()  # local: reads the profile or key file, no credentials resolved
            self.client = self.ec2 = None
            self.instances, self.instance_states, self.vpc_id, self.sg_id, self.sn_ids = [], {}, 0, 0, []

        def create_vpc(self) -> Any:
            self.would_create_vpc = True
            return SimpleNamespace(id=None)  # Parsl's __init__ reads ``.id`` of the VPC

        def write_state_file(self) -> None:
            pass

        def _refuse(self, *args: Any, **kwargs: Any):
            raise RuntimeError("a dry-run AWS provider (fedgrid check) cannot start instances")

        submit = status = cancel = teardown = _refuse

    return DryRunAWSProvider


def provider(spec: Spec, dry_run: bool = False, state_file: str | None = None):
    from parsl.providers import AWSProvider

    cls = dry_run_provider_class() if dry_run else AWSProvider
    return cls(**provider_kwargs(spec, state_file))


def provider_config(spec: Spec) -> dict[str, Any]:
    """``engine.provider`` of a Globus Compute endpoint's config.yaml for this site."""
    return hpc.provider_config("AWSProvider", provider_kwargs(spec))


def build(site: Any, run_dir: Path, dry_run: bool = False):
    require("boto3", site=site.name, kind="aws", extra="aws")
    state = str(Path(run_dir) / f"aws-{site.name}.json")
    return hpc.remote_htex(site, provider(site.executor, dry_run, state), site.executor, dry_run=dry_run,
                           certs=certs.InCommand())


def describe(site: Any) -> str:
    s: Spec = site.executor
    price = f"spot bid ${s.spot_max_bid:g}/h" if s.spot_max_bid else "on-demand"
    state = s.state_file or f"<run_dir>/aws-{site.name}.json"
    return (hpc.describe_htex("AWS EC2", s, {"region": s.region, "instance_type": s.instance_type, "image": s.image_id},
                          node="instance")
            + f"; a run starts up to {s.max_blocks} {price} instance(s) and, unless {state} names one,"
            " creates a VPC, subnets, internet gateway and security group that stay after the run")
