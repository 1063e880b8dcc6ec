import BlockIO
import DeviceMapper
import Foundation
import KernelSimulator
import Snapstack
import SnapstackErrors
import Testing

/// `snapshot --store VG`: a store is a logical volume of its own, made, grown and removed
/// through LVM, and refused with nothing changed when the group cannot hold it.
@Suite struct VolumeStoreTests {
    static func snapshot(_ lab: SimulatedLab, _ names: [String], store: String, size: Bytes = .mebibytes(8)) throws -> SnapshotSetResult {
        var options = SnapshotOptions()
        options.name = "s"
        options.store = store
        options.size = .bytes(size)
        return try lab.orchestrator().snapshot(names, options: options)
    }

    @Test func aSnapshotsStoreIsAVolumeThatExtendGrowsAndDropRemoves() throws {
        let lab = try SimulatedLab()
        lab.makeStoreGroup()
        try lab.protect(2)
        _ = try Self.snapshot(lab, ["vol0", "vol1"], store: SimulatedLab.storeGroup, size: .mebibytes(6))
        var volumes = try lab.kernel.volumes(tagged: "snapstack")
        // 6 MiB in 4 MiB extents.
        #expect(volumes.map(\.size) == [.mebibytes(8), .mebibytes(8)])
        let summaries = try lab.orchestrator().snapshotSummaries()
        #expect(Set(summaries.map(\.store)) == Set(volumes.map(\.fullName)))
        // Each snapshot's table names its own volume as the COW device.
        for summary in summaries {
            let table = try #require(lab.kernel.capture().devices["snapstack-\(summary.name)"]?.live)
            #expect(table.description.contains(" /dev/\(summary.store) "), "\(table)")
        }

        let grown = try lab.orchestrator().extend(snapshot: "vol0-s", .by(.mebibytes(8)))
        #expect(grown.size == .mebibytes(16))
        volumes = try lab.kernel.volumes(tagged: "snapstack")
        let vol0Store = try #require(summaries.first { $0.origin == "vol0" }?.store)
        #expect(volumes.first { $0.fullName == vol0Store }?.size == .mebibytes(16))

        try lab.orchestrator().drop(snapshot: "vol0-s")
        #expect(try lab.kernel.volumes(tagged: "snapstack").map(\.fullName) == summaries.filter { $0.origin == "vol1" }.map(\.store))
        try lab.orchestrator().drop(snapshot: "vol1-s")
        #expect(try lab.kernel.volumes(tagged: "snapstack").isEmpty)
        #expect(try lab.kernel.volumeGroup(named: SimulatedLab.storeGroup)?.free == .mebibytes(256))
    }

    /// Each refusal names what and why, and leaves the kernel, the volumes and the records as they were.
    @Test(arguments: [
        ("a group without room", "storevg", Bytes.mebibytes(50), "has 96 MiB (100663296 bytes) free; the stores need 104 MiB (109051904 bytes)"),
        ("a group that does not exist", "novg", Bytes.mebibytes(8), "no volume group novg"),
        ("a group on the origin", "originvg", Bytes.mebibytes(8), "for the store is on a device it would serve"),
        ("a name LVM cannot hold", "bad,name", Bytes.mebibytes(8), "is not a volume group name"),
    ])
    func refusedWithNothingChanged(_ label: String, _ group: String, _ size: Bytes, _ message: String) throws {
        let lab = try SimulatedLab()
        lab.makeStoreGroup(size: .mebibytes(96))
        try lab.protect(2)
        // A group whose PV is the protected vol0's top device.
        lab.kernel.makeVolumeGroup("originvg", size: .mebibytes(32), physicalVolumes: ["/dev/mapper/snapstack-vol0"])
        let before = try lab.picture()
        let volumesBefore = try lab.kernel.volumes(tagged: "snapstack")
        let error = #expect(throws: SnapstackError.self, "\(label)") {
            _ = try Self.snapshot(lab, ["vol0", "vol1"], store: group, size: size)
        }
        #expect(error?.description.contains(message) == true, "\(label): \(error.map { "\($0)" } ?? "")")
        #expect(try lab.picture() == before, "\(label)")
        #expect(try lab.kernel.volumes(tagged: "snapstack") == volumesBefore, "\(label)")
    }

    /// A store volume no record names (the database lost it) is removed by reconcile; one that
    /// another state directory's device owns is not looked at.
    @Test func reconcileRemovesAStoreVolumeNothingRecords() throws {
        let lab = try SimulatedLab()
        lab.makeStoreGroup()
        try lab.protect()
        let device = try #require(try lab.orchestrator().deviceSummaries().first)
        try lab.kernel.createVolume(group: SimulatedLab.storeGroup, name: "snapstack-\(device.id)-0badc0de", size: .mebibytes(4), tag: "snapstack")
        try lab.kernel.createVolume(group: SimulatedLab.storeGroup, name: "snapstack-ffffffff-0badc0de", size: .mebibytes(4), tag: "snapstack")
        let actions = try lab.orchestrator().reconcile()
        #expect(actions.map(\.step) == ["remove-orphan-volume"], "\(actions)")
        #expect(try lab.kernel.volumes(tagged: "snapstack").map(\.name) == ["snapstack-ffffffff-0badc0de"])
    }

    /// `protect --cbt-metadata VG`: the era layer's metadata device is a volume of the group,
    /// which unprotect removes; a group that cannot hold it is refused with nothing changed.
    @Test func eraMetadataOnAVolume() throws {
        let lab = try SimulatedLab()
        lab.makeStoreGroup()
        lab.metadataGroup = SimulatedLab.storeGroup
        try lab.protect()
        let device = try #require(try lab.orchestrator().deviceSummaries().first)
        let volume = try #require(try lab.kernel.volumes(tagged: "snapstack").first)
        #expect(volume.fullName == "\(SimulatedLab.storeGroup)/snapstack-\(device.id)-era")
        let real = try #require(lab.kernel.capture().devices["snapstack-vol0-real"]?.live)
        #expect(real.description.contains(" era \(try #require(volume.number)) "), "\(real)")
        #expect(lab.files().isEmpty, "no metadata file: \(lab.files())")
        try lab.orchestrator().unprotect(name: "vol0")
        #expect(try lab.kernel.volumes(tagged: "snapstack").isEmpty)
    }

    @Test(arguments: [("novg", "no volume group novg"), ("originvg", "for the change-tracking metadata is on a device it would serve"), ("tinyvg", "free; the change-tracking metadata needs")])
    func eraMetadataGroupRefused(_ group: String, _ message: String) throws {
        let lab = try SimulatedLab()
        lab.kernel.makeVolumeGroup("originvg", size: .mebibytes(32), physicalVolumes: [SimulatedLab.disks[0]])
        lab.kernel.makeVolumeGroup("tinyvg", size: .zero, physicalVolumes: [SimulatedLab.disks[2]])
        let before = try lab.picture()
        var options = ProtectOptions()
        options.cbtMetadataGroup = group
        let error = #expect(throws: SnapstackError.self) {
            try lab.orchestrator().protect(devicePath: SimulatedLab.disks[0], name: "vol0", options: options)
        }
        #expect(error?.description.contains(message) == true, "\(error.map { "\($0)" } ?? "")")
        #expect(try lab.picture() == before)
        #expect(try lab.kernel.volumes(tagged: "snapstack").isEmpty)
    }
}
