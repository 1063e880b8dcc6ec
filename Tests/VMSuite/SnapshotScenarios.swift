import BlockIO
import DeviceMapper
import Foundation

/// The LVM-style snapshot dance, done through the library: the origin becomes
/// `snapshot-origin` over a `-real` layer, a persistent snapshot keeps the old chunks on a COW
/// device, and `snapshot-merge` rolls the origin back.
enum SnapshotScenarios {
    static let all: [Scenario] = [
        Scenario("snapshot keeps the origin's old bytes while the origin is written", snapshotKeepsOldBytes),
        Scenario("merge brings the origin back to the snapshot's bytes", mergeRollsBack),
        Scenario("origin writes beyond a full COW invalidate the snapshot, never the origin", originOverflowInvalidates),
        Scenario("a PO snapshot written beyond its COW reports Overflow", snapshotWriteOverflows),
    ]

    static let size = Bytes.mebibytes(32)
    static let chunk = Sectors(8)

    struct Stack {
        var disk: (path: String, facts: BlockDeviceFacts)
        var cow: (path: String, facts: BlockDeviceFacts)
        var origin: DMName
        var real: DMName
        var snapshot: DMName
        var before: String
    }

    /// Makes the origin (a linear device over a disk of random bytes, as an LV is), then takes a
    /// snapshot of it the way lvcreate -s does: everything prepared first, and the snapshot
    /// activated only while the origin is suspended, so that no write can slip between.
    static func takeSnapshot(_ lab: Lab, cowSize: Bytes = .mebibytes(16), persistence: SnapshotPersistence = .persistent) throws -> Stack {
        let disk = try lab.loopDevice("disk", size: size, random: true)
        let cow = try lab.loopDevice("cow", size: cowSize)
        let (origin, originUUID) = try lab.name("origin")
        let (real, realUUID) = try lab.name("origin-real")
        let (snapshot, snapshotUUID) = try lab.name("snap")
        lab.track(origin)
        try lab.dm.create(origin, uuid: originUUID, table: try Table(length: disk.facts.sectors, .linear(Linear(device: .path(disk.path)))))
        let before = try lab.sha256(origin.devicePath, length: size)

        // Preload: the -real layer takes the origin's old table; the snapshot table waits inactive.
        lab.track(real)
        try lab.dm.create(real, uuid: realUUID, table: try lab.dm.table(origin))
        let realNumber = try lab.dm.info(real)!.number
        lab.track(snapshot)
        try lab.dm.createInactive(snapshot, uuid: snapshotUUID, table: try Table(
            length: disk.facts.sectors,
            .snapshot(Snapshot(origin: .number(realNumber), cow: .path(cow.path), persistence: persistence, chunkSize: chunk))))
        try lab.dm.load(origin, table: try Table(length: disk.facts.sectors, .snapshotOrigin(SnapshotOrigin(origin: .number(realNumber)))))

        try lab.dm.withSuspended([origin]) {
            try lab.dm.resume(snapshot)
        }
        // withSuspended's resume swapped the snapshot-origin table in.
        return Stack(disk: disk, cow: cow, origin: origin, real: real, snapshot: snapshot, before: before)
    }

    static func snapshotKeepsOldBytes(_ lab: Lab) throws {
        let stack = try takeSnapshot(lab)
        let realNumber = try lab.dm.info(stack.real)!.number
        try expectEqual(try lab.dmsetupTable(stack.origin), "0 \(stack.disk.facts.sectors.rawValue) snapshot-origin \(realNumber)",
                        "origin table")
        try expectEqual(try lab.dmsetupTable(stack.snapshot),
                        "0 \(stack.disk.facts.sectors.rawValue) snapshot \(realNumber) \(stack.cow.facts.number) P \(chunk.rawValue)",
                        "snapshot table")
        try expectEqual(try lab.sha256(stack.snapshot.devicePath, length: size), stack.before, "snapshot right after creation")
        guard case .snapshot(let fresh) = try lab.dm.status(stack.snapshot).first?.status,
              case .active(let allocatedBefore, let total, _) = fresh
        else { throw Failure(description: "snapshot status: \(try lab.dmsetupStatus(stack.snapshot))") }
        try expectEqual(total, stack.cow.facts.sectors, "COW size in status")
        try lab.capture(stack.origin, as: "snapshot-origin")
        try lab.capture(stack.snapshot, as: "snapshot-fresh")

        // Overwrite 4 MiB of the origin: the snapshot must still read the old bytes.
        try lab.writeRandom(stack.origin.devicePath, offset: .mebibytes(1), length: .mebibytes(4))
        try expect(try lab.sha256(stack.origin.devicePath, length: size) != stack.before, "the origin did not change")
        try expectEqual(try lab.sha256(stack.snapshot.devicePath, length: size), stack.before, "snapshot after origin writes")

        guard case .snapshot(.active(let allocated, _, let metadata)) = try StatusLine(parsing: lab.dmsetupStatus(stack.snapshot)).status
        else { throw Failure(description: "dmsetup status: \(try lab.dmsetupStatus(stack.snapshot))") }
        // 4 MiB in 8-sector chunks were copied once each.
        try expect(allocated - metadata >= Bytes.mebibytes(4).exactSectors!, "only \(allocated - metadata) sectors copied")
        try expect(allocated > allocatedBefore, "allocation did not grow")
        try lab.capture(stack.snapshot, as: "snapshot-used")
    }

    static func mergeRollsBack(_ lab: Lab) throws {
        let stack = try takeSnapshot(lab)
        try lab.writeRandom(stack.origin.devicePath, offset: .zero, length: .mebibytes(8))
        try expect(try lab.sha256(stack.origin.devicePath, length: size) != stack.before, "the origin did not change")
        let realNumber = try lab.dm.info(stack.real)!.number

        // The snapshot device goes first: its persistent exceptions stay on the COW device, and
        // snapshot-merge must not run beside a live snapshot of the same store.
        try lab.dm.remove(stack.snapshot)
        try lab.dm.load(stack.origin, table: try Table(
            length: stack.disk.facts.sectors,
            .snapshotMerge(SnapshotMerge(origin: .number(realNumber), cow: .path(stack.cow.path), chunkSize: chunk))))
        try lab.dm.withSuspended([stack.origin]) {}
        try expectEqual(try lab.dmsetupTable(stack.origin),
                        "0 \(stack.disk.facts.sectors.rawValue) snapshot-merge \(realNumber) \(stack.cow.facts.number) P \(chunk.rawValue)",
                        "origin table while merging")

        let deadline = Date().addingTimeInterval(120)
        var status: SnapshotStatus
        repeat {
            guard case .snapshotMerge(let s) = try lab.dm.status(stack.origin).first?.status else {
                throw Failure(description: "merge status: \(try lab.dmsetupStatus(stack.origin))")
            }
            status = s
            if status.isMergeComplete { break }
            try expect(status != .mergeFailed && status != .invalid, "merge stopped: \(status)")
            Thread.sleep(forTimeInterval: 0.2)
        } while Date() < deadline
        try expect(status.isMergeComplete, "merge not finished in 120 s: \(status)")
        // The independent witness agrees that only metadata remains allocated.
        try expectEqual(try StatusLine(parsing: lab.dmsetupStatus(stack.origin)).status, .snapshotMerge(status), "dmsetup status")
        try lab.capture(stack.origin, as: "snapshot-merge-done")

        // Back to a plain linear origin, as lvconvert leaves it.
        try lab.dm.load(stack.origin, table: try Table(length: stack.disk.facts.sectors, .linear(Linear(device: .path(stack.disk.path)))))
        try lab.dm.withSuspended([stack.origin]) {}
        try lab.dm.remove(stack.real)
        try expectEqual(try lab.sha256(stack.origin.devicePath, length: size), stack.before, "origin after merge")
        try expectEqual(try lab.sha256(stack.disk.path, length: size), stack.before, "disk after merge")
    }

    static func originOverflowInvalidates(_ lab: Lab) throws {
        // A 1 MiB COW cannot hold 4 MiB of changes. The kernel invalidates a snapshot that an
        // origin write cannot be copied for (`__origin_write`), even with PO: the origin's
        // writes must never wait on, or fail because of, a snapshot.
        let stack = try takeSnapshot(lab, cowSize: .mebibytes(1), persistence: .persistentReportingOverflow)
        try lab.capture(stack.snapshot, as: "snapshot-po")
        try lab.writeRandom(stack.origin.devicePath, offset: .zero, length: .mebibytes(4))
        let expected = try lab.sha256(stack.origin.devicePath, length: .mebibytes(4))
        try expectEqual(try lab.sha256(stack.disk.path, length: .mebibytes(4)), expected, "origin data on disk")
        try expectEqual(try lab.dm.status(stack.snapshot).first?.status, .snapshot(.invalid), "status of the snapshot")
        try expectEqual(try lab.dmsetupStatus(stack.snapshot), "0 \(stack.disk.facts.sectors.rawValue) snapshot Invalid", "dmsetup status")
        try lab.capture(stack.snapshot, as: "snapshot-invalid")
    }

    static func snapshotWriteOverflows(_ lab: Lab) throws {
        // Writes to the snapshot itself that do not fit are refused, and a PO snapshot says
        // Overflow instead of becoming invalid (`snapshot_map`).
        let stack = try takeSnapshot(lab, cowSize: .mebibytes(1), persistence: .persistentReportingOverflow)
        let write = try lab.run(["dd", "if=/dev/zero", "of=\(stack.snapshot.devicePath)", "bs=64k", "count=64",
                                 "oflag=direct", "conv=notrunc,fsync", "status=none"], allowFailure: true)
        try expect(write.status != 0, "a 4 MiB write into a 1 MiB COW succeeded")
        try expectEqual(try lab.dm.status(stack.snapshot).first?.status, .snapshot(.overflow), "status of the snapshot")
        try expectEqual(try lab.dmsetupStatus(stack.snapshot), "0 \(stack.disk.facts.sectors.rawValue) snapshot Overflow", "dmsetup status")
        try lab.capture(stack.snapshot, as: "snapshot-overflow")
        try expectEqual(try lab.sha256(stack.origin.devicePath, length: size), stack.before, "origin after the snapshot overflowed")
    }
}
