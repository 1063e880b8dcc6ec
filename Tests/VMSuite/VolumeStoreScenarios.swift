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
        Scenario("snapshot --store VG: the store is an LV that lvs shows and dmsetup deps names; the store watch grows it with lvextend under load while the snapshot stays frozen; drop removes it; a crash after the store is made is repaired by reconcile; refusals change nothing",
                 volumeStore).lasting(110),
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
}
