"""python -m edgetune_localcluster {build,up,down,status,kubeconfig,env} [--data-dir DIR]"""
from __future__ import annotations

import argparse
import json
import sys

from . import build, images, objectstore, tools
from .cluster import LocalCluster


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgetune_localcluster", description=__doc__)
    ap.add_argument("command", choices=["build", "up", "down", "status", "kubeconfig", "env"])
    ap.add_argument("--data-dir", help="cluster state folder (default: $EDGETUNE_LOCALCLUSTER_DIR or localcluster/.data/dev)")
    ap.add_argument("--fresh", action="store_true", help="up: wipe the data dir first")
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--ml-image", action="store_true",
                    help="build: the job steps' CPU image (trainer-cpu) too; needs `make install` first")
    a = ap.parse_args(argv)
    if a.command == "build":
        existed = build.binary_path().exists()
        path = build.ensure_binary()
        info = build.build_info() or {}
        print(path)
        if info:
            print(f"[localcluster] {'reusing' if existed else 'built'} {path.name} (kubernetes {build.k8s_version()}; "
                  f"built {info['when']} in {info['seconds']}s from a {'cold' if info['cold_go_cache'] else 'warm'} "
                  f"Go cache; size {info['bytes'] / 2**20:.1f} MiB)", file=sys.stderr)
        # the nodes: Debian packages, containerd, CoreDNS, the sandbox and base images
        refs = images.ensure_node_images(tools.ensure_all())
        print(f"[localcluster] S3 server: {objectstore.ensure_binary()}", file=sys.stderr)  # ~14 min cold
        if a.ml_image:  # before the tests, outside any test's time limit (up to 12 minutes cold)
            refs["trainer-cpu"] = images.trainer_cpu_image(refs["base"])
        for name, f in tools.build_figures().items():
            print(f"[localcluster] {name}: built {f['when']} in {f['seconds']}s, {f['bytes'] / 2**20:.1f} MiB",
                  file=sys.stderr)
        figs = images.figures()
        for name, ref in refs.items():
            f = figs.get(images.archive_path(ref).stem, {})
            print(f"[localcluster] image {ref}: built {f.get('when')} in {f.get('seconds')}s, "
                  f"{f.get('bytes', 0) / 2**20:.1f} MiB", file=sys.stderr)
        return 0
    c = LocalCluster(a.data_dir)
    if a.command == "up":
        c.up(timeout=a.timeout, fresh=a.fresh)
        print(f"export KUBECONFIG={c.kubeconfig}")
        print(f"export PATH={c.data_dir / 'bin'}:$PATH")
    elif a.command == "down":
        c.down()
    elif a.command == "status":
        st = c.status()
        print(json.dumps(st, indent=1))
        return 0 if st["ready"] else 3
    elif a.command == "kubeconfig":
        print(c.kubeconfig)
    elif a.command == "env":
        print(f"export KUBECONFIG={c.kubeconfig}")
        print(f"export PATH={c.data_dir / 'bin'}:$PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
