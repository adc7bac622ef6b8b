"""Run a longjax command as a Kubernetes JobSet (what GKE and XPK run) on TPU slices or GPU nodes.

  python launch/k8s.py --name llama2-yarn --image us-docker.pkg.dev/p/r/longjax:latest --hosts 4 \
      --tpu_accelerator tpu-v5-lite-podslice --tpu_topology 4x4 --chips_per_host 4 \
      -- python -m longjax.train --config configs/llama2_7b.py --workdir gs://bucket/runs/llama2
  python launch/k8s.py --name llama2-yarn --image ... --hosts 2 --gpus_per_host 8 [--gpu_accelerator nvidia-h100-80gb] \
      --dry_run -- python -m longjax.train ...

One indexed Job of --hosts pods (completions = parallelism = hosts), one pod a host, every pod running the
command. Pods find each other by DNS: the coordinator is the first pod, NAME-workers-0-0.NAME (JobSet's
headless service); JAX_NUM_PROCESSES is --hosts and JAX_PROCESS_ID the pod's job completion index, which
longjax's jax.distributed.initialize reads. --dry_run prints the manifest (YAML) and, as its last comment,
the command that submits it; otherwise `kubectl apply -f -` submits it.

Preemption and failures: a failed or evicted pod fails its Job (backoffLimit 0: one pod restarted alone could
not rejoin the others' jax.distributed), and JobSet then recreates every pod, up to --max_restarts times; each
start resumes from the workdir. A pod being stopped gets SIGTERM, on which training saves a checkpoint, and
--grace_period seconds before SIGKILL (Kubernetes' default of 30 s is too short for a 7B save). The workdir
must outlive the pods: gs:// (the pods' service account needs write access to the bucket, e.g. by Workload
Identity), or a ReadWriteMany volume claim mounted with --pvc CLAIM:/mount/path.
The image: the Dockerfile at the checkout's root (its WORKDIR holds configs/).
"""

import json
import math
import re
import shlex
import sys

from common import Parser, dns_label, execute, fail, split_command

API_VERSION = "jobset.x-k8s.io/v1alpha2"
APPLY = ["kubectl", "apply", "-f", "-"]  # reads the manifest from stdin
REPLICATED_JOB = "workers"
COORDINATOR_PORT = 1234
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def _scalar(value) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (int, float)):
    return str(value)
  return json.dumps(value)  # a JSON string is a YAML double-quoted scalar


def to_yaml(value, indent: int = 0) -> str:
  """Block-style YAML of dicts, lists and scalars (no PyYAML needed; strings are always quoted)."""
  pad = " " * indent
  if isinstance(value, dict):
    lines = []
    for key, item in value.items():
      if isinstance(item, (dict, list)) and item:
        lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
      else:
        lines.append(f"{pad}{key}: {json.dumps(item) if isinstance(item, (dict, list)) else _scalar(item)}")
    return "\n".join(lines)
  if isinstance(value, list):
    lines = []
    for item in value:
      if isinstance(item, dict) and item:
        body = to_yaml(item, indent + 2)
        lines.append(f"{pad}- {body[indent + 2:]}")
      else:
        lines.append(f"{pad}- {_scalar(item)}")
    return "\n".join(lines)
  return pad + _scalar(value)


def manifest(args, command: list[str]) -> dict:
  """The JobSet: one replicated job of `hosts` indexed pods, TPU or GPU resources and node selectors."""
  coordinator = f"{args.name}-{REPLICATED_JOB}-0-0.{args.name}:{COORDINATOR_PORT}"
  env = [{"name": "JAX_COORDINATOR_ADDRESS", "value": coordinator},
         {"name": "JAX_NUM_PROCESSES", "value": str(args.hosts)},
         {"name": "JAX_PROCESS_ID", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}}]
  env += [{"name": key, "value": value} for key, value in (item.split("=", 1) for item in args.env)]
  if args.tpu_accelerator:
    resources = {"google.com/tpu": args.chips_per_host}
    selector = {"cloud.google.com/gke-tpu-accelerator": args.tpu_accelerator,
                "cloud.google.com/gke-tpu-topology": args.tpu_topology}
  else:
    resources = {"nvidia.com/gpu": args.gpus_per_host}
    selector = {"cloud.google.com/gke-accelerator": args.gpu_accelerator} if args.gpu_accelerator else {}
  # /dev/shm in memory: a container's default is 64 MiB, too small for NCCL and host-side buffers.
  volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
  mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
  for index, (claim, path) in enumerate(item.split(":", 1) for item in args.pvc):
    volumes.append({"name": f"pvc-{index}", "persistentVolumeClaim": {"claimName": claim}})
    mounts.append({"name": f"pvc-{index}", "mountPath": path})
  pod = {"restartPolicy": "Never", "terminationGracePeriodSeconds": args.grace_period,
         **({"nodeSelector": selector} if selector else {}),
         "containers": [{"name": "longjax", "image": args.image, "command": command, "env": env,
                         "ports": [{"containerPort": COORDINATOR_PORT}],
                         "resources": {"limits": resources}, "volumeMounts": mounts}],
         "volumes": volumes}
  metadata = {"name": args.name, **({"namespace": args.namespace} if args.namespace else {})}
  if args.tpu_accelerator:  # one slice (node pool) per job: JobSet's exclusive placement, as GKE's TPU guide does
    metadata["annotations"] = {"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}
  return {
      "apiVersion": API_VERSION, "kind": "JobSet", "metadata": metadata,
      "spec": {
          "failurePolicy": {"maxRestarts": args.max_restarts},
          "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
          "replicatedJobs": [{
              "name": REPLICATED_JOB, "replicas": 1,
              "template": {"spec": {"completionMode": "Indexed", "completions": args.hosts,
                                    "parallelism": args.hosts, "backoffLimit": 0,  # JobSet restarts all
                                    "template": {"spec": pod}}}}]}}


def parse(argv: list[str]):
  own, command = split_command(argv)
  parser = Parser(prog="k8s.py", description=__doc__.splitlines()[0])
  parser.add_argument("--name", required=True, help="the JobSet's name (its pods' DNS names start with it)")
  parser.add_argument("--image", required=True, help="a container image with longjax installed")
  parser.add_argument("--hosts", type=int, required=True, help="pods: TPU VMs of the slice, or GPU nodes")
  parser.add_argument("--tpu_accelerator", default="", help="GKE TPU type, e.g. tpu-v5-lite-podslice, tpu-v5p-slice")
  parser.add_argument("--tpu_topology", default="", help="e.g. 4x4 (v5e), 2x2x4 (v4, v5p)")
  parser.add_argument("--chips_per_host", type=int, default=4, help="TPU chips a pod requests")
  parser.add_argument("--gpus_per_host", type=int, default=0, help="GPUs a pod requests (GPU nodes)")
  parser.add_argument("--gpu_accelerator", default="", help="GKE GPU type, e.g. nvidia-h100-80gb (optional)")
  parser.add_argument("--namespace", default="")
  parser.add_argument("--max_restarts", type=int, default=5,
                      help="times JobSet recreates all pods after a failure or preemption (each resumes)")
  parser.add_argument("--grace_period", type=int, default=600,
                      help="seconds between SIGTERM (training saves) and SIGKILL; size it to a checkpoint save")
  parser.add_argument("--pvc", action="append", default=[],
                      help="CLAIM:/mount/path, a PersistentVolumeClaim every pod mounts (repeatable)")
  parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every pod (repeatable)")
  parser.add_argument("--dry_run", action="store_true", help="print the manifest instead of applying it")
  args = parser.parse_args(own)
  if not command:
    fail("k8s.py: give the command after --, e.g. -- python -m longjax.train --config ... --workdir gs://...")
  dns_label(args.name, "--name")
  if len(args.name) > 40:  # pod hostnames NAME-workers-J-K must stay within 63 characters
    fail(f"--name={args.name!r} is invalid: at most 40 characters")
  if args.hosts < 1:
    fail(f"--hosts={args.hosts} is invalid: must be >= 1")
  if bool(args.tpu_accelerator) == bool(args.gpus_per_host):
    fail("give either --tpu_accelerator (with --tpu_topology) or --gpus_per_host, not both or neither")
  if args.tpu_accelerator:
    if not re.fullmatch(r"\d+(x\d+)+", args.tpu_topology):
      fail(f"--tpu_topology={args.tpu_topology!r} is invalid: expected chips along each axis, e.g. 4x4 or 2x2x4")
    chips = math.prod(int(n) for n in args.tpu_topology.split("x"))
    if chips != args.hosts * args.chips_per_host:
      fail(f"--hosts={args.hosts} is invalid: topology {args.tpu_topology} has {chips} chips, not hosts x "
           f"chips_per_host = {args.hosts} x {args.chips_per_host}")
  elif args.gpus_per_host < 0:
    fail(f"--gpus_per_host={args.gpus_per_host} is invalid: must be >= 1")
  for item in args.env:
    if "=" not in item or not item.split("=", 1)[0].isidentifier():
      fail(f"--env {item!r} is invalid: expected KEY=VALUE")
  for item in args.pvc:
    claim, _, path = item.partition(":")
    if not claim or not path.startswith("/"):
      fail(f"--pvc {item!r} is invalid: expected CLAIM:/mount/path")
  for name in ("max_restarts", "grace_period"):
    if getattr(args, name) < 0:
      fail(f"--{name}={getattr(args, name)} is invalid: must be >= 0")
  return args, command


def main(argv: list[str]) -> int:
  args, command = parse(argv)
  text = to_yaml(manifest(args, command)) + "\n"
  if args.dry_run:
    print(text + f"# submitted with: {shlex.join(APPLY)}")
    return 0
  return execute([APPLY], False, stdin=text)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
