#!/usr/bin/env python3
"""Hot-plugs disk images into the lab VM on the guest's request (started by vm.sh --hotplug).

The guest writes a request file NAME.req (JSON, written elsewhere and renamed into place) into
REQUEST_DIR, a host directory it sees read-write; this agent carries it out over qemu's QMP
socket and answers with NAME.done: {"ok": true} or {"ok": false, "error": "..."}.

  {"op": "add", "id": "d1", "image": "/abs/path.img", "serial": "S"}
      blockdev-add (raw over file) + device_add virtio-blk-pci on a free pcie-root-port
  {"op": "remove", "id": "d1"}
      device_del, wait for qemu's DEVICE_DELETED (the guest acknowledges the unplug), blockdev-del

The image path is the same on host and guest (vm.sh's --rwdir maps paths unchanged). The agent
ends when qemu closes the socket. Python's standard library only.
"""
import json
import os
import socket
import sys
import time


class QMP:
    def __init__(self, path, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise SystemExit(f"hotplug-agent: no QMP socket at {path} after {timeout} s")
                time.sleep(0.2)
        self.file = self.sock.makefile("rwb")
        self.events = []
        self.read()  # greeting
        self.command("qmp_capabilities")

    def read(self):
        line = self.file.readline()
        if not line:
            raise EOFError("qemu closed the QMP socket")
        return json.loads(line)

    def command(self, name, **arguments):
        message = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self.file.write(json.dumps(message).encode() + b"\n")
        self.file.flush()
        while True:
            reply = self.read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{name}: {reply['error'].get('desc', reply['error'])}")
            elif "return" in reply:
                return reply["return"]

    def wait_event(self, name, device, timeout):
        deadline = time.monotonic() + timeout
        self.sock.settimeout(1.0)
        try:
            while time.monotonic() < deadline:
                for event in self.events:
                    if event["event"] == name and event.get("data", {}).get("device") == device:
                        self.events.remove(event)
                        return
                try:
                    self.events.append(self.read())
                except (socket.timeout, TimeoutError):
                    continue
        finally:
            self.sock.settimeout(None)
        raise RuntimeError(f"no {name} for {device} within {timeout} s (did the guest refuse the unplug?)")


def main():
    if len(sys.argv) < 4:
        raise SystemExit("usage: hotplug-agent.py QMP_SOCKET REQUEST_DIR PORT...")
    qmp_path, directory, ports = sys.argv[1], sys.argv[2], sys.argv[3:]
    qmp = QMP(qmp_path)
    plugged = {}  # disk id -> port
    while True:
        requests = sorted(f for f in os.listdir(directory) if f.endswith(".req"))
        if not requests:
            # Also notices qemu's exit between requests.
            qmp.command("query-status")
            time.sleep(0.05)
            continue
        for name in requests:
            path = os.path.join(directory, name)
            answer = {"ok": True}
            try:
                with open(path) as f:
                    request = json.load(f)
                disk = request["id"]
                if request["op"] == "add":
                    free = [p for p in ports if p not in plugged.values()]
                    if not free:
                        raise RuntimeError(f"all {len(ports)} hotplug ports are in use")
                    qmp.command("blockdev-add", driver="raw", **{"node-name": f"node-{disk}"},
                                file={"driver": "file", "filename": request["image"]})
                    try:
                        qmp.command("device_add", driver="virtio-blk-pci", id=disk, drive=f"node-{disk}",
                                    bus=free[0], serial=request.get("serial", disk))
                    except Exception:
                        qmp.command("blockdev-del", **{"node-name": f"node-{disk}"})
                        raise
                    plugged[disk] = free[0]
                    answer["port"] = free[0]
                elif request["op"] == "remove":
                    qmp.command("device_del", id=disk)
                    qmp.wait_event("DEVICE_DELETED", disk, timeout=60)
                    qmp.command("blockdev-del", **{"node-name": f"node-{disk}"})
                    plugged.pop(disk, None)
                else:
                    raise RuntimeError(f"unknown op {request['op']!r}")
            except (EOFError, BrokenPipeError, ConnectionResetError):
                raise
            except Exception as error:  # reported to the guest, which fails its scenario
                answer = {"ok": False, "error": str(error)}
            os.unlink(path)
            done = path[: -len(".req")] + ".done"
            with open(done + ".tmp", "w") as f:
                json.dump(answer, f)
            os.rename(done + ".tmp", done)
            print(f"hotplug-agent: {name}: {answer}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        main()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # qemu is gone: the VM ended
