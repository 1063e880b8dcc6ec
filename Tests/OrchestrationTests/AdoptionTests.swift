import BlockIO
import DeviceMapper
import Foundation
import KernelSimulator
import Locking
@testable import Snapstack
import SnapstackErrors
import StateDatabase
import SystemPackage
import Testing

/// Adopting a live dm device (an LVM volume) online, over the simulated kernel: the live node
/// stays and maps through the stack; a foreign reload is found, recorded and adopted again;
/// unprotect gives the device its table back.
@Suite struct AdoptionTests {
    static let volume = "vg-data"
    static let lvmTable = "0 65536 linear 8:0 2048"

    /// A lab with an "LVM volume" vg-data over the first disk, mounted (one external opener).
    func lab() throws -> SimulatedLab {
        let lab = try SimulatedLab()
        try lab.kernel.create(try DMName(Self.volume), uuid: try DMUUID("LVM-abcdefabcdefabcdef"),
                              table: try Table(parsing: Self.lvmTable), readOnly: false, udevFlags: [])
        lab.kernel.open(Self.volume)
        return lab
    }

    func table(_ lab: SimulatedLab, _ name: String) throws -> String {
        try lab.kernel.table(try DMName(name)).description
    }

    func number(_ lab: SimulatedLab, _ name: String) throws -> DeviceNumber {
        try #require(try lab.kernel.info(try DMName(name))).number
    }

    @Test func aMountedVolumeIsAdoptedInPlaceOverAClone() throws {
        let lab = try lab()
        let before = try number(lab, Self.volume)
        let summary = try lab.orchestrator().protect(devicePath: "/dev/mapper/vg-data", name: "data",
                                                     options: ProtectOptions(cbtBlock: .mebibytes(1)))
        #expect(summary.path == "/dev/mapper/vg-data")
        #expect(summary.adopted == "vg/data")
        #expect(summary.tracking == .continuous)
        // The node keeps its number; it maps through -real, which is era over the clone,
        // which carries the volume's own table.
        #expect(try number(lab, Self.volume) == before)
        let real = try number(lab, "snapstack-data-real")
        #expect(try table(lab, Self.volume) == "0 65536 linear \(real) 0")
        guard case .era(let era) = try lab.kernel.table(try DMName("snapstack-data-real")).lines[0].target else {
            Issue.record("-real is not era"); return
        }
        #expect(era.origin == .number(try number(lab, "snapstack-data-clone")))
        #expect(try table(lab, "snapstack-data-clone") == Self.lvmTable)
        #expect(try lab.kernel.info(try DMName("snapstack-data")) == nil)
    }

    @Test func unprotectGivesTheMountedVolumeItsTableBackByteForByte() throws {
        let lab = try lab()
        try lab.orchestrator().protect(devicePath: "/dev/mapper/vg-data", name: "data")
        try lab.orchestrator().unprotect(name: "data")
        #expect(try table(lab, Self.volume) == Self.lvmTable)
        #expect(try lab.kernel.list().map(\.name) == [Self.volume])
        #expect(try lab.orchestrator().deviceSummaries().isEmpty)
    }

    @Test func aForeignReloadInterruptsTrackingUntilAdoptedAgainAtTheNewSize() throws {
        let lab = try lab()
        try lab.orchestrator().protect(devicePath: "/dev/mapper/vg-data", name: "data",
                                       options: ProtectOptions(cbtBlock: .mebibytes(1)))
        var options = SnapshotOptions()
        options.name = "s1"
        options.size = .bytes(.mebibytes(2))
        _ = try lab.orchestrator().snapshot(["data"], options: options)
        let device = try lab.orchestrator().device(named: "data")
        let base = try #require(try lab.orchestrator().database.snapshots(deviceID: device.id).first?.era)
        // As lvextend does: a plain table, one segment longer, loaded and resumed.
        let grown = Self.lvmTable + "\n65536 16384 linear 8:16 2048"
        try lab.kernel.load(try DMName(Self.volume), table: try Table(parsing: grown), readOnly: false)
        try lab.kernel.withSuspended([try DMName(Self.volume)], options: [], transaction: nil) {}

        let summary = try lab.orchestrator().deviceSummary(named: "data")
        #expect(summary.tracking == .interrupted)
        #expect(summary.trackingInterruptedReason?.contains("reloaded by another program") == true)
        let export = fakeExport(of: device, era: base)
        let refused = try #require(throws: SnapstackError.self) {
            try lab.orchestrator().checkTrackingContinuous(device, since: export)
        }
        #expect(refused.kind == .trackingInterrupted)

        #expect(try lab.orchestrator().metricsInput().trackingInterruptions == 0)
        let actions = try lab.orchestrator().reconcile()
        #expect(actions.map(\.step) == ["readopt"])
        #expect(try lab.orchestrator().metricsInput().trackingInterruptions == 1)
        let real = try number(lab, "snapstack-data-real")
        #expect(try table(lab, Self.volume) == "0 81920 linear \(real) 0")
        #expect(try table(lab, "snapstack-data-clone") == grown)
        #expect(try lab.kernel.table(try DMName("snapstack-data-real")).size == Sectors(81920))
        // The snapshot missed the origin's writes meanwhile: invalid, never silently stale.
        #expect(try lab.orchestrator().snapshotSummaries().map(\.state) == [.invalid])
        let readopted = try lab.orchestrator().device(named: "data")
        #expect(readopted.sizeBytes == 81920 * 512)
        // Still refused after the re-adoption: writes before it were not recorded...
        let again = try #require(throws: SnapstackError.self) {
            try lab.orchestrator().checkTrackingContinuous(readopted, since: export)
        }
        #expect(again.kind == .trackingInterrupted)
        #expect(try lab.orchestrator().deviceSummary(named: "data").tracking == .interrupted)
        // ...but an export from after it builds on exact tracking again.
        let after = fakeExport(of: readopted, era: try #require(readopted.trackingInterruptedEra) + 1)
        try lab.orchestrator().checkTrackingContinuous(readopted, since: after)
        // A second reconcile finds nothing to do, and unprotect restores LVM's current table.
        #expect(try lab.orchestrator().reconcile().isEmpty)
        try lab.orchestrator().unprotect(name: "data", force: true)
        #expect(try table(lab, Self.volume) == grown)
        #expect(try lab.kernel.list().map(\.name) == [Self.volume])
    }

    @Test func aSnapshotOfABypassedVolumeAdoptsItAgainFirst() throws {
        let lab = try lab()
        try lab.orchestrator().protect(devicePath: "/dev/mapper/vg-data", name: "data",
                                       options: ProtectOptions(cbtBlock: .mebibytes(1)))
        try lab.kernel.load(try DMName(Self.volume), table: try Table(parsing: Self.lvmTable), readOnly: false)
        try lab.kernel.withSuspended([try DMName(Self.volume)], options: [], transaction: nil) {}
        var options = SnapshotOptions()
        options.name = "s1"
        options.size = .bytes(.mebibytes(2))
        _ = try lab.orchestrator().snapshot(["data"], options: options)
        let real = try number(lab, "snapstack-data-real")
        #expect(try table(lab, Self.volume) == "0 65536 snapshot-origin \(real)")
        let device = try lab.orchestrator().device(named: "data")
        #expect(device.trackingInterruptedEra != nil)
        #expect(device.trackingInterruptedReason?.contains("did not map through") == true)
    }

    @Test func afterARebootTheVolumeIsAdoptedAgainWhenLVMActivatesItUnderAnotherNumber() throws {
        let lab = try lab()
        try lab.orchestrator().protect(devicePath: "/dev/mapper/vg-data", name: "data",
                                       options: ProtectOptions(cbtBlock: .mebibytes(1)))
        lab.kernel.reboot()
        // LVM activates the volume again, its table its own, at another minor.
        try lab.kernel.create(try DMName("other"), uuid: nil, table: try Table(parsing: "0 8 zero"), readOnly: false, udevFlags: [])
        try lab.kernel.create(try DMName(Self.volume), uuid: try DMUUID("LVM-abcdefabcdefabcdef"),
                              table: try Table(parsing: Self.lvmTable), readOnly: false, udevFlags: [])
        let outcome = try #require(try lab.orchestrator().readoptIfBypassed(dmName: Self.volume))
        #expect(outcome.name == "data")
        #expect(outcome.why.contains("did not map through"))
        let real = try number(lab, "snapstack-data-real")
        #expect(try table(lab, Self.volume) == "0 65536 linear \(real) 0")
        let device = try lab.orchestrator().device(named: "data")
        #expect(DeviceNumber(major: UInt32(device.sourceMajor), minor: UInt32(device.sourceMinor)) == (try number(lab, Self.volume)))
        #expect(try lab.orchestrator().deviceSummary(named: "data").tracking == .interrupted)
        // Mapping through its stack, a change of it is left alone.
        #expect(try lab.orchestrator().readoptIfBypassed(dmName: Self.volume) == nil)
        #expect(try lab.orchestrator().readoptIfBypassed(dmName: "other") == nil)
    }

    @Test func tablesThatCannotBeClonedAreRefusedWithTheReason() throws {
        let cases: [(String, String)] = [
            ("0 2048 thin 253:3 1", "thin volume"),
            ("0 2048 crypt aes-xts-plain64 0000 0 8:0 4096", "dm-crypt"),
            ("0 2048 snapshot-origin 253:1", "snapshots"),
            ("0 1024 linear 8:0 0\n1024 1024 cache 253:1 253:2 253:3 128 0 default 0", "cache segment"),
            ("0 2048 zero", "holds no data"),
        ]
        for (text, reason) in cases {
            let refusal = Adoption.refusal(of: try Table(parsing: text), device: "vg-x")
            #expect(refusal?.why.contains(reason) == true, "\(text): \(String(describing: refusal))")
        }
        #expect(Adoption.refusal(of: try Table(parsing: "0 1024 linear 8:0 0\n1024 1024 striped 2 128 8:16 0 8:32 0"), device: "x") == nil)
    }

    @Test func aRefusedVolumeIsLeftAsItWas() throws {
        let lab = try SimulatedLab()
        try lab.kernel.create(try DMName("vg-zero"), uuid: nil, table: try Table(parsing: "0 65536 zero"), readOnly: false, udevFlags: [])
        let before = try lab.picture()
        let error = try #require(throws: SnapstackError.self) {
            try lab.orchestrator().protect(devicePath: "/dev/mapper/vg-zero", name: "z")
        }
        #expect(error.kind == .refused)
        #expect(try lab.picture() == before)
    }

    @Test func theVolumeGroupsLVMLockIsHeldWhileTheVolumeIsSwitched() throws {
        let lab = try lab()
        let directory = lab.kernel.lvmLockDirectory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // An LVM command holds the group's lock: protect waits for it, then gives up, changing nothing.
        let held = try FileLock(directory: FilePath(directory), name: "V_vg", mode: .exclusive, timeout: 1, recordsHolder: false)
        let before = try lab.picture()
        let error = try #require(throws: SnapstackError.self) {
            try lab.orchestrator().protect(devicePath: "/dev/mapper/vg-data", name: "data")
        }
        #expect(error.kind == .locked)
        #expect(error.what.contains("an LVM command"))
        let after = try lab.picture()
        #expect(after == before, "\(after.devices) \(after.loops) \(after.files) \(after.records) vs \(before.devices) \(before.loops) \(before.files)")
        withExtendedLifetime(held) {}
    }

    static let crashPoints: [Failpoint] = [
        .protectRecorded, .protectMetadataAttached, .protectRealCreated, .protectTopCreated,
        .unprotectRecorded, .unprotectTopRemoved, .unprotectRealRemoved,
    ]

    /// A crash at every failpoint of adopting and releasing a mounted volume: reconcile leaves
    /// it either adopted (mapping through its stack) or as LVM made it, never suspended or
    /// half-switched, and unprotect then gives back exactly LVM's table.
    @Test(arguments: crashPoints)
    func aCrashWhileAdoptingOrReleasingIsRepaired(_ point: Failpoint) throws {
        let lab = try lab()
        if point.rawValue.hasPrefix("unprotect") {
            try lab.orchestrator().protect(devicePath: "/dev/mapper/vg-data", name: "data")
        }
        let reached = try lab.crash(at: point) { orchestrator in
            if point.rawValue.hasPrefix("unprotect") {
                try orchestrator.unprotect(name: "data")
            } else {
                try orchestrator.protect(devicePath: "/dev/mapper/vg-data", name: "data")
            }
        }
        #expect(reached)
        _ = try lab.orchestrator().reconcile()
        #expect(try lab.orchestrator().reconcile(dryRun: true).isEmpty)
        let state = lab.kernel.capture()
        #expect(state.devices.values.allSatisfy { !$0.suspended && $0.inactive == nil })
        let protected = try lab.orchestrator().deviceSummaries()
        if protected.isEmpty {
            #expect(try table(lab, Self.volume) == Self.lvmTable)
            #expect(state.devices.keys.sorted() == [Self.volume])
        } else {
            let real = try number(lab, "snapstack-data-real")
            #expect(try table(lab, Self.volume) == "0 65536 linear \(real) 0")
            #expect(try table(lab, "snapstack-data-clone") == Self.lvmTable)
            try lab.orchestrator().unprotect(name: "data")
            #expect(try table(lab, Self.volume) == Self.lvmTable)
            #expect(lab.kernel.capture().devices.keys.sorted() == [Self.volume])
        }
        #expect(lab.files().isEmpty)
    }

    @Test func lvmNamesReadAsVGSlashLV() {
        #expect(Adoption.displayName("vg-data", uuid: "LVM-x") == "vg/data")
        #expect(Adoption.displayName("my--vg-my--lv", uuid: "LVM-x") == "my-vg/my-lv")
        #expect(Adoption.displayName("vg-lv-x", uuid: "LVM-x") == "vg/lv-x")
        #expect(Adoption.displayName("plain", uuid: "LVM-x") == "plain")
        #expect(Adoption.displayName("vg-data", uuid: "CRYPT-x") == "vg-data")
        #expect(Adoption.volumeGroup("my--vg-my--lv", uuid: "LVM-x") == "my-vg")
        #expect(Adoption.volumeGroup("vg-data", uuid: "CRYPT-x") == nil)
    }

    private func fakeExport(of device: DeviceRecord, era: Int64) -> ExportRecord {
        ExportRecord(id: "e1", deviceID: device.id, snapshotID: "s", snapshotName: "s1", kind: .full, state: .complete,
                     era: era, blockSizeBytes: 1 << 20, deviceSizeBytes: device.sizeBytes, imagePath: nil, format: "raw",
                     bytesRead: 0, bytesWritten: 0)
    }
}
