import BlockIO
import DeviceMapper
import Foundation

/// The libdm client against the real kernel: queries, create/load/remove, refusals, suspend.
enum ClientScenarios {
    static let all: [Scenario] = [
        Scenario("driver and target versions agree with dmsetup", driverAndTargets),
        Scenario("linear device: create, table read back, data lands at the offset", linearRoundTrip),
        Scenario("a table the kernel refuses leaves no device behind", refusedTableLeavesNothing),
        Scenario("names and paths that could inject arguments never reach the kernel", injectionRefused),
        Scenario("suspend is always followed by resume", guaranteedResume),
        Scenario("an inactive table is loaded, cleared, and swapped in by resume", inactiveTables),
    ]

    static func driverAndTargets(_ lab: Lab) throws {
        let version = try lab.dm.driverVersion()
        let dmsetup = try lab.sh("dmsetup", "version")
        try expect(dmsetup.contains("Driver version:    \(version)"), "dmsetup version says \(dmsetup), library says \(version)")

        let targets = try lab.dm.targetVersions()
        let listed = try lab.sh("dmsetup", "targets")
        for name in ["linear", "era", "snapshot", "snapshot-origin", "snapshot-merge"] {
            let target = try targets.first { $0.name == name } ?? { throw Failure(description: "no \(name) target") }()
            let line = listed.split(separator: "\n").first { $0.split(separator: " ").first == Substring(name) }
            try expectEqual(line.map { $0.split(separator: " ", omittingEmptySubsequences: true).last.map(String.init) } ?? nil,
                            "v\(target.description)", "dmsetup targets' version of \(name)")
        }
    }

    static func linearRoundTrip(_ lab: Lab) throws {
        let disk = try lab.loopDevice("disk", size: .mebibytes(64))
        let (name, uuid) = try lab.name("linear")
        let offset = Sectors(2048)
        let length = disk.facts.sectors - offset
        let table = try Table(length: length, .linear(Linear(device: .path(disk.path), offset: offset)))
        lab.track(name)
        try lab.dm.create(name, uuid: uuid, table: table)

        // The udev cookie makes the node exist by the time create returns.
        try expect(FileManager.default.fileExists(atPath: name.devicePath), "\(name.devicePath) missing after create")
        // The kernel names the device by number in what it prints back.
        let expected = try Table(length: length, .linear(Linear(device: .number(disk.facts.number), offset: offset)))
        try expectEqual(try lab.dm.table(name), expected, "table read through libdm")
        try expectEqual(try Table(parsing: lab.dmsetupTable(name)), expected, "dmsetup table")
        try expectEqual(try lab.dmsetupInfo(name, "uuid"), uuid.rawValue, "dmsetup's uuid")
        try expectEqual(try lab.sh("blockdev", "--getsz", name.devicePath).trimmingCharacters(in: .whitespacesAndNewlines),
                        "\(length.rawValue)", "blockdev --getsz")
        try lab.capture(name, as: "linear")

        let info = try lab.dm.info(name) ?? { throw Failure(description: "info found no device") }()
        try expectEqual(try lab.dmsetupInfo(name, "major,minor"), "\(info.number.major)|\(info.number.minor)", "device number")
        try expect(info.hasLiveTable && !info.suspended && info.openCount == 0, "unexpected state \(info)")
        try expect(try lab.dm.list().contains(ListedDevice(name: name.rawValue, number: info.number)), "list() lacks \(name)")

        // Data written through the device lands `offset` sectors into the disk.
        try lab.writeRandom(name.devicePath, offset: .zero, length: .mebibytes(1))
        try expectEqual(try lab.sha256(disk.path, offset: offset.bytes, length: .mebibytes(1)),
                        try lab.sha256(name.devicePath, length: .mebibytes(1)), "bytes under the linear mapping")

        try expect(try lab.dm.remove(name), "remove reported no device")
        try expect(try lab.dm.remove(name) == false, "a second remove should be a no-op")
        try expect(!FileManager.default.fileExists(atPath: name.devicePath), "\(name.devicePath) still exists")
        try expectEqual(try lab.dmsetupInfo(name, "name"), nil, "dmsetup info after remove")
    }

    static func refusedTableLeavesNothing(_ lab: Lab) throws {
        let disk = try lab.loopDevice("small", size: .mebibytes(8))
        let before = try lab.dmsetupNames()
        let (name, uuid) = try lab.name("too-long")
        lab.track(name)
        // Longer than the disk: the kernel's table check refuses it at load time.
        let table = try Table(length: disk.facts.sectors + Sectors(8), .linear(Linear(device: .path(disk.path))))

        let created = try expectThrows("create over a too-small disk") { try lab.dm.create(name, uuid: uuid, table: table) }
        try expect("\(created)".contains("reload") || "\(created)".contains("ioctl"),
                   "the error should carry libdm's words: \(created)")
        try expectEqual(try lab.dmsetupNames(), before, "dmsetup ls after a refused create")

        let preloaded = try expectThrows("createInactive over a too-small disk") {
            try lab.dm.createInactive(name, uuid: uuid, table: table)
        }
        try expect(preloaded is DeviceMapperError, "unexpected error type: \(preloaded)")
        try expectEqual(try lab.dmsetupNames(), before, "dmsetup ls after a refused preload")

        // An existing device of the same name is never touched by a create.
        let good = try Table(length: disk.facts.sectors, .linear(Linear(device: .path(disk.path))))
        try lab.dm.create(name, uuid: uuid, table: good)
        let clash = try expectThrows("create over an existing name") { try lab.dm.create(name, uuid: uuid, table: good) }
        try expect((clash as? DeviceMapperError)?.kind == .alreadyExists, "expected alreadyExists, got \(clash)")
        try expectEqual(try lab.dmsetupTable(name), "0 \(disk.facts.sectors.rawValue) linear \(disk.facts.number) 0",
                        "table of the existing device")

        // A message the target does not know: the kernel's EINVAL and libdm's text are in the error.
        let message = try expectThrows("unknown message to linear") { try lab.dm.message(name, "bogus") }
        try expect((message as? DeviceMapperError)?.errno != nil || !((message as? DeviceMapperError)?.messages.isEmpty ?? true),
                   "message error carries no cause: \(message)")
    }

    static func injectionRefused(_ lab: Lab) throws {
        let before = try lab.dmsetupNames()
        for bad in ["vmtest bad", "vmtest\nbad", "vmtest/bad", "vmtest\tbad"] {
            _ = try expectThrows("DMName(\(bad.debugDescription))") { _ = try DMName(bad) }
        }
        for bad in ["/tmp/a b", "/dev/loop0\n0 8 zero", "relative/path"] {
            _ = try expectThrows("checkedPath(\(bad.debugDescription))") { _ = try DeviceReference.checkedPath(bad) }
        }
        // A path made without the check is still caught before the ioctl.
        let (name, uuid) = try lab.name("inject")
        lab.track(name)
        let table = try Table(length: Sectors(8), .linear(Linear(device: .path("/dev/loop0 0\n8 8 zero"))))
        let error = try expectThrows("create with an injected path") { try lab.dm.create(name, uuid: uuid, table: table) }
        guard case .invalidTable = (error as? DeviceMapperError)?.kind else {
            throw Failure(description: "expected invalidTable, got \(error)")
        }
        try expectEqual(try lab.dmsetupNames(), before, "dmsetup ls")
    }

    static func guaranteedResume(_ lab: Lab) throws {
        let disk = try lab.loopDevice("disk", size: .mebibytes(16))
        let (name, uuid) = try lab.name("suspend")
        lab.track(name)
        try lab.dm.create(name, uuid: uuid, table: try Table(length: disk.facts.sectors, .linear(Linear(device: .path(disk.path)))))

        // dmsetup attr: (L)ive table, (I)nactive table, (s)uspended, then r/w.
        func state() throws -> String { try lab.dmsetupInfo(name, "attr").map { String($0.prefix(3)) } ?? "gone" }
        try lab.dm.withSuspended([name], options: [.noLockFS]) {
            try expectEqual(try state(), "L-s", "dmsetup attr while suspended")
            try expect(try lab.dm.info(name)?.suspended == true, "info should say suspended")
        }
        try expectEqual(try state(), "L--", "dmsetup attr after withSuspended")

        struct Boom: Error {}
        _ = try expectThrows("withSuspended whose body throws") {
            try lab.dm.withSuspended([name]) { throw Boom() }
        }
        try expectEqual(try state(), "L--", "dmsetup attr after a throwing body")

        // The second suspend fails (no such device): the first must be resumed.
        let missing = try DMName(Lab.namePrefix + "does-not-exist")
        let error = try expectThrows("withSuspended over a missing device") {
            try lab.dm.withSuspended([name, missing]) {}
        }
        try expect((error as? DeviceMapperError)?.operation == "suspend", "expected the suspend to fail: \(error)")
        try expectEqual(try state(), "L--", "dmsetup attr after a failed second suspend")
    }

    static func inactiveTables(_ lab: Lab) throws {
        let disk = try lab.loopDevice("disk", size: .mebibytes(16))
        let (name, uuid) = try lab.name("inactive")
        lab.track(name)
        let linear = try Table(length: disk.facts.sectors, .linear(Linear(device: .path(disk.path))))
        try lab.dm.createInactive(name, uuid: uuid, table: linear)
        var info = try lab.dm.info(name)
        try expect(info?.hasInactiveTable == true && info?.hasLiveTable == false, "after preload: \(String(describing: info))")
        try expectEqual(try lab.dmsetupInfo(name, "attr").map { String($0.prefix(3)) }, "-I-", "dmsetup attr after preload")
        try lab.dm.resume(name)
        try expectEqual(try lab.dmsetupTable(name), "0 \(disk.facts.sectors.rawValue) linear \(disk.facts.number) 0", "live table")

        // Load a zero table, clear it: the live table stays.
        try lab.dm.load(name, table: try Table(length: disk.facts.sectors, .zero))
        info = try lab.dm.info(name)
        try expect(info?.hasInactiveTable == true, "inactive table should be present")
        try lab.dm.clearInactive(name)
        try expect(try lab.dm.info(name)?.hasInactiveTable == false, "inactive table should be gone")
        try expectEqual(try lab.dmsetupTable(name), "0 \(disk.facts.sectors.rawValue) linear \(disk.facts.number) 0",
                        "live table after clear")

        // Load error + zero over two ranges and swap them in.
        let half = Sectors(disk.facts.sectors.rawValue / 2)
        let split = try Table([
            TableLine(start: .zero, length: half, target: .error),
            TableLine(start: half, length: disk.facts.sectors - half, target: .zero),
        ])
        try lab.dm.load(name, table: split)
        try lab.dm.resume(name)
        try expectEqual(try Table(parsing: lab.dmsetupTable(name)), split, "two-line table read back by dmsetup")
        try lab.capture(name, as: "error-zero")
        let read = try lab.run(["dd", "if=\(name.devicePath)", "of=/dev/null", "bs=4096", "count=1", "iflag=direct"],
                               allowFailure: true)
        try expect(read.status != 0, "reading the error range should fail")
    }
}
