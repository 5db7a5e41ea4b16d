"""Drives the lab with proxmoxer (Debian's python3-proxmoxer), as Ansible's proxmox_kvm and other
PVE clients do: ticket login as root@pam and an API token, create with typical options, start,
hot-plug a disk into the running VM, storage listing, shutdown, delete. TLS is verified against
the lab node's certificate. Prints one JSON object with what it saw; exits non-zero on any error.

Run by test/unit/lab/proxmoxer.test.ts with LAB_HOST, LAB_CA, LAB_NODE, LAB_ROOT_PASSWORD,
LAB_TOKEN (user@realm!name=secret) in the environment.
"""
import json
import os
import sys
import time

from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

HOST = os.environ["LAB_HOST"]
CA = os.environ["LAB_CA"]
NODE = os.environ["LAB_NODE"]
VMID = 4242


def wait(api, upid, timeout=60):
    """Polls a task as Ansible's proxmox modules do, until it stops; returns its exit status."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = api.nodes(NODE).tasks(upid).status.get()
        if st["status"] == "stopped":
            return st["exitstatus"]
        time.sleep(0.05)
    raise RuntimeError("task %s still running" % upid)


def main():
    seen = {}
    root = ProxmoxAPI(HOST, user="root@pam", password=os.environ["LAB_ROOT_PASSWORD"], verify_ssl=CA)
    user, secret = os.environ["LAB_TOKEN"].split("=", 1)
    token_user, token_name = user.split("!", 1)
    tok = ProxmoxAPI(HOST, user=token_user, token_name=token_name, token_value=secret, verify_ssl=CA)

    seen["version"] = root.version.get()
    seen["nextid"] = root.cluster.nextid.get()

    # create with the options proxmox_kvm sends for a typical VM (booleans as 1/0, property strings)
    upid = root.nodes(NODE).qemu.create(
        vmid=VMID, name="ansible-vm", ostype="l26", bios="ovmf", machine="q35", cpu="host",
        cores=2, sockets=1, vcpus=2, memory=2048, balloon=1024, numa=0, kvm=1, acpi=1, tablet=0,
        agent="enabled=1,fstrim_cloned_disks=1", onboot=1, protection=0, startup="order=2,up=10",
        scsihw="virtio-scsi-single", vga="std", hotplug="network,disk,usb", localtime=1,
        description="made by proxmoxer", tags="ansible;lab",
        scsi0="local-vm:4,iothread=1,discard=on,ssd=1", efidisk0="local-vm:1,efitype=4m,pre-enrolled-keys=1",
        ide2="local-vm:cloudinit", net0="virtio,bridge=vmbr0,firewall=1", boot="order=scsi0;net0",
        ciuser="admin", cipassword="S3cret-for-the-lab", ipconfig0="ip=10.20.0.5/24,gw=10.20.0.1",
        nameserver="10.20.0.1", searchdomain="lab.test", serial0="socket", watchdog="model=i6300esb,action=reset",
    )
    seen["create"] = wait(root, upid)
    cfg = root.nodes(NODE).qemu(VMID).config.get()
    seen["config"] = {k: cfg.get(k) for k in ("name", "cores", "memory", "balloon", "agent", "machine", "bios", "tablet", "startup", "watchdog", "scsi0", "efidisk0", "net0", "cipassword", "tags")}

    seen["start"] = wait(root, root.nodes(NODE).qemu(VMID).status.start.post())
    seen["status"] = root.nodes(NODE).qemu(VMID).status.current.get()["status"]

    # hot-plug a blank disk into the running VM; then read config and pending as a client would
    root.nodes(NODE).qemu(VMID).config.put(scsi1="local-vm:2,serial=blank")
    cfg = root.nodes(NODE).qemu(VMID).config.get()
    seen["hotplugged"] = cfg.get("scsi1")
    seen["pending_scsi1"] = [p for p in root.nodes(NODE).qemu(VMID).pending.get() if p["key"] == "scsi1"]

    # storage listing, with the API token
    seen["storages"] = sorted(s["storage"] for s in tok.nodes(NODE).storage.get())
    seen["cluster_storages"] = sorted(s["storage"] for s in tok.storage.get())
    seen["images"] = sorted(v["volid"] for v in tok.nodes(NODE).storage("local-vm").content.get(vmid=VMID))

    # a client mistake gets PVE's 400 with per-parameter errors
    try:
        root.nodes(NODE).qemu(VMID).config.put(onboot="yes-please")
        seen["bad"] = None
    except ResourceException as e:
        seen["bad"] = {"status": e.status_code, "reason": e.content}

    seen["shutdown"] = wait(root, root.nodes(NODE).qemu(VMID).status.shutdown.post(timeout=30))
    seen["status_after"] = root.nodes(NODE).qemu(VMID).status.current.get()["status"]
    seen["delete"] = wait(root, root.nodes(NODE).qemu(VMID).delete(purge=1))
    seen["vms_after"] = [v["vmid"] for v in root.nodes(NODE).qemu.get()]
    seen["images_after"] = [v["volid"] for v in tok.nodes(NODE).storage("local-vm").content.get(vmid=VMID)]
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    main()
