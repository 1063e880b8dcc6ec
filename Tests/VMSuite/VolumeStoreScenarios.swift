import BlockIO
import DeviceMapper
import Foundation
import Snapstack
import SnapstackDaemon

/// `snapshot --store VG`: the COW store is a logical volume snapstack makes, grows and removes
/// through LVM. Witnesses: lvs (size, tags, device numbers), dmsetup deps/status, vgck,
/// sha256sum of the snapshot.
enum VolumeStoreScenarios {
    static let all: [Scenario] = [
        Scenario("snapshot --store VG: the store is an LV that lvs shows and dmsetup deps names; reconcile activates it after a reboot-like loss; the store watch grows it with lvextend under load while the snapshot stays frozen; drop removes it; a crash after the store is made is repaired by reconcile; refusals change nothing",
                 volumeStore).lasting(270).nightly(),
        Scenario("protect --cbt-metadata VG of a mounted LV: era metadata on an LV of the same group (dmsetup table, lvs), no file or loop device; full + 2 incrementals equal their snapshots, era_invalidate on the LV agrees; unprotect removes it; a missing group is refused with nothing changed",
                 metadataVolume).lasting(270).nightly(),
    ]

    typealias CLI = OrchestratorScenarios.CLI

    /// snapstack's store volumes as lvs reports them: name -> (size in bytes, kernel major:minor).
    static func storeVolumes(_ vg: AdoptionScenarios.VolumeGroup) throws -> [String: (size: UInt64, number: String)] {
        let output = try vg.lvm(["lvs", "--noheadings", "--units", "b", "--nosuffix", "--separator", ",",
                                 "-o", "lv_name,lv_size,lv_kernel_major,lv_kernel_minor", "@snapstack"])
        var result: [String: (size: UInt64, number: String)] = [:]
        for line in output.split(separator: "\n") {
            let fields = line.trimmingCharacters(in: .whitespaces).split(separator: ",").map(String.init)
            guard fields.count == 4, let size = UInt64(fields[1]) else { throw Failure(description: "lvs line \(line)") }
            result[fields[0]] = (size, "\(fields[2]):\(fields[3])")
        }
        return result
    }

    static func volumeStore(_ lab: Lab) throws {
        let cli = CLI(lab)
        let size = Bytes.mebibytes(64)
        let disk = try lab.loopDevice("disk", size: size, random: true)
        let top = try cli.protect(disk.path, "vol")
        try AdoptionScenarios.withVolumeGroup(lab, "cowvg", pvSizes: [.mebibytes(48)]) { vg in
            // Refusals first: a store larger than the group's room, a group that does not exist.
            let before = try OrchestratorScenarios.world(lab, cli) + (try vg.lvm(["lvs", "-a", "cowvg"]))
            for (arguments, status, words) in [(["--size", "60M"], Int32(6), "free; the stores need"),
                                               (["--store", "novg"], Int32(5), "no volume group novg")] {
                let result = try cli.run(["snapshot", "vol", "--store", "cowvg", "--as", "r"] + arguments)
                try expectEqual(result.status, status, "snapshot \(arguments) (stderr: \(result.stderr))")
                try expect(result.stderr.contains(words), "snapshot \(arguments) says: \(result.stderr)")
            }
            try expectEqual(try OrchestratorScenarios.world(lab, cli) + (try vg.lvm(["lvs", "-a", "cowvg"])), before,
                            "dm devices, loops, state and lvs after the refusals")

            // The store: an LV of 8 MiB, tagged, named in the snapshot's table and in reports.
            let path = try cli.ok("snapshot", "vol", "--store", "cowvg", "--size", "8M", "--as", "s")
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let made = try storeVolumes(vg)
            try expectEqual(made.count, 1, "store volumes after the snapshot: \(made)")
            let (volume, facts) = made.first!
            try expectEqual(facts.size, 8 << 20, "the store volume's size")
            let deps = try lab.sh("dmsetup", "deps", "-o", "devno", "snapstack-vol-s")
            try expect(deps.contains("(\(facts.number.replacingOccurrences(of: ":", with: ", ")))"),
                       "the snapshot's table must hold the store LV \(facts.number): \(deps)")
            let row = try cli.rows("snapshots").first
            try expectEqual(row?["store"] as? String, "cowvg/\(volume)", "the snapshots report's store")
            let frozen = try lab.sha256(path, length: size)

            // As after a boot where LVM has not activated the group: reconcile activates the
            // store and brings the snapshot back with the same content.
            try lab.sh("dmsetup", "remove", "snapstack-vol-s")
            try vg.lvm(["lvchange", "-q", "-an", "cowvg/\(volume)"])
            try expect(!FileManager.default.fileExists(atPath: "/dev/cowvg/\(volume)"), "the store LV is still active")
            try cli.ok("reconcile")
            try expectEqual(try lab.sha256(path, length: size), frozen, "the snapshot re-activated from its store LV")

            // The store watch grows it under a steady writer (128 KiB every 0.5 s at most, 6 MiB
            // in all). A growth is two LVM commands, seconds each in the emulated guest: the
            // threshold leaves room for what is written meanwhile.
            let watch = StoreWatchScenarios.Watch(
                state: cli.state, settings: StoreWatchSettings(enabled: true, threshold: 0.25, step: nil, limit: nil, pollInterval: .seconds(1)))
            defer { _ = try? watch.stop() }
            let writer = try lab.run(["/bin/sh", "-c", """
                i=0; while [ $i -lt 48 ]; do
                  dd if=/dev/urandom of="$1" bs=128k seek=$i count=1 oflag=direct conv=notrunc status=none || exit 1
                  i=$((i+1)); sleep 0.5
                done
                """, "sh", top], allowFailure: true)
            try expectEqual(writer.status, 0, "the writer (stderr: \(writer.stderr))")
            Thread.sleep(forTimeInterval: 2)
            try watch.stop()
            let grown = try storeVolumes(vg)[volume]?.size ?? 0
            try expect(grown > 8 << 20, "the store watch did not grow the store LV: still \(grown) bytes")
            let status = try StoreWatchScenarios.snapshotStatus(lab, "snapstack-vol-s")
            try expectEqual(status?.total ?? 0, grown / 512, "the snapshot's COW size (dmsetup status) against lvs")
            try expectEqual(try lab.sha256(path, length: size), frozen, "the snapshot after 6 MiB of origin writes")
            let recorded = (try cli.rows("snapshots").first?["size"] as? NSNumber)?.uint64Value ?? 0
            try expectEqual(recorded, grown, "the recorded store size against lvs")

            try cli.ok("drop", "vol-s")
            let afterDrop = try storeVolumes(vg)
            try expect(afterDrop.isEmpty, "drop left store volumes: \(afterDrop)")

            // A crash once the stores are made: reconcile removes the snapshot and its LV.
            let crashed = try cli.run(["snapshot", "vol", "--store", "cowvg", "--size", "4M", "--as", "c"],
                                      failpoint: Failpoint.snapshotStoreAttached.rawValue)
            try expectEqual(crashed.status, 128 + 9, "the snapshot killed at its failpoint (stderr: \(crashed.stderr))")
            try expectEqual(try storeVolumes(vg).count, 1, "the store LV a crash left")
            try cli.ok("reconcile")
            let afterReconcile = try storeVolumes(vg)
            try expect(afterReconcile.isEmpty, "reconcile left store volumes: \(afterReconcile)")
            try expect(!(try lab.dmsetupNames()).contains("snapstack-vol-c"), "reconcile left the snapshot device")
            let check = try vg.lvmRun(["vgck", "cowvg"], allowFailure: false)
            try expect(check.stderr.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "vgck cowvg: \(check.stderr)")
        }
        try cli.ok("unprotect", "vol")
    }

    static func metadataVolume(_ lab: Lab) throws {
        let cli = CLI(lab)
        try AdoptionScenarios.withVolumeGroup(lab, "vgmeta", pvSizes: [.mebibytes(192)]) { vg in
            vg.cli = cli
            let lv = try vg.createLV("data", size: "64M")
            let sectors: UInt64 = 64 << 11
            let mountPoint = try vg.mountExt4(lv)
            try lab.sh("dd", "if=/dev/urandom", "of=\(mountPoint)/base", "bs=1M", "count=8", "conv=fsync", "status=none")

            try cli.ok("devices") // the state, made at first use
            let before = try OrchestratorScenarios.world(lab, cli) + (try vg.lvm(["lvs", "-a", vg.name]))
            let refused = try cli.run(["protect", lv.path, "--name", "data", "--cbt-metadata", "novg"])
            try expectEqual(refused.status, 5, "protect --cbt-metadata novg (stderr: \(refused.stderr))")
            try expect(refused.stderr.contains("no volume group novg"), "the refusal says: \(refused.stderr)")
            try expectEqual(try OrchestratorScenarios.world(lab, cli) + (try vg.lvm(["lvs", "-a", vg.name])), before,
                            "dm devices, loops, state and lvs after the refusal")

            vg.adopted.append("data")
            try cli.ok("protect", lv.path, "--name", "data", "--cbt-block", "64K", "--cbt-metadata", vg.name)
            let id = try AdoptionScenarios.deviceRow(cli, "data")["id"] as? String ?? ""
            let metadata = try vg.lvm(["lvs", "--noheadings", "-o", "lv_name,lv_kernel_major,lv_kernel_minor,lv_tags", "@snapstack"])
                .split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
            try expectEqual(metadata.count, 1, "snapstack's volumes: \(metadata)")
            try expectEqual(metadata.first?.first, "snapstack-\(id)-era", "the metadata volume's name")
            let number = (metadata.first ?? []).dropFirst().prefix(2).joined(separator: ":")
            let real = try AdoptionScenarios.table(lab, "snapstack-data-real")
            try expect(real.contains(" era \(number) "), "snapstack-data-real must keep its metadata on the LV \(number): \(real)")
            let files = (try? FileManager.default.contentsOfDirectory(atPath: cli.state + "/cbt")) ?? []
            try expect(!files.contains { $0.hasSuffix(".era") }, "a metadata file was made: \(files)")
            try expect(!(try lab.sh("losetup", "-a")).contains(cli.state), "a loop device over the state directory")

            let image = lab.scratch.appendingPathComponent("data.img").path
            _ = try AdoptionScenarios.exportRounds(lab, cli, lv: lv, name: "data", mountPoint: mountPoint, sectors: sectors,
                                                   rounds: 2, image: image)
            try cli.ok("unprotect", "data")
            let left = try vg.lvm(["lvs", "--noheadings", "-o", "lv_name", "@snapstack"])
            try expect(left.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "unprotect left volumes: \(left)")
            let check = try vg.lvmRun(["vgck", vg.name], allowFailure: false)
            try expect(check.stderr.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "vgck: \(check.stderr)")
        }
    }
}
