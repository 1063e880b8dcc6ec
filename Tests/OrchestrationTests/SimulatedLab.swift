import BlockIO
import DeviceMapper
import Foundation
import KernelSimulator
import Snapstack
import SystemPackage

/// A state directory in a fresh temporary directory and a simulated kernel with three disks:
/// the unit tier's stand-in for the VM lab.
final class SimulatedLab {
    let root: String
    let kernel: SimulatedKernel
    var stateDirectory: FilePath { FilePath(root + "/state") }
    static let diskSize = Bytes.mebibytes(64)
    static let disks = ["/dev/sda", "/dev/sdb", "/dev/sdc"]

    init() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("snapstack-sim-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root + "/run", withIntermediateDirectories: true)
        kernel = SimulatedKernel(runtimeDirectory: root + "/run")
        for (index, path) in Self.disks.enumerated() {
            kernel.plug(path, number: DeviceNumber(major: 8, minor: UInt32(16 * index)), size: Self.diskSize, serial: "disk-\(index)")
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    /// The volume group `storevg` on a disk of its own, for `snapshot --store storevg`.
    static let storeGroup = "storevg"

    /// Where `protect` puts era metadata: nil for files in the state directory.
    var metadataGroup: String?

    func makeStoreGroup(size: Bytes = .mebibytes(256)) {
        kernel.plug("/dev/sdz", number: DeviceNumber(major: 8, minor: 240), size: size, serial: "store-disk")
        kernel.makeVolumeGroup(Self.storeGroup, size: size, physicalVolumes: ["/dev/sdz"])
    }

    func orchestrator() throws -> Orchestrator {
        try Orchestrator(stateDirectory: stateDirectory, lockTimeout: 1, kernel: kernel.kernel)
    }

    /// Protects the first `count` disks as vol0, vol1, ...
    func protect(_ count: Int = 1, cbt: Bool = true) throws {
        let orchestrator = try orchestrator()
        for index in 0..<count {
            var options = ProtectOptions(cbtBlock: cbt ? .mebibytes(1) : nil)
            options.cbtMetadataGroup = metadataGroup
            try orchestrator.protect(devicePath: Self.disks[index], name: "vol\(index)", options: options)
        }
    }

    /// Everything of ours the kernel and the state directory hold, to compare before and after.
    struct Picture: Equatable, CustomStringConvertible {
        var devices: [String: SimulatedKernel.Device]
        var loops: [String]
        var files: [String]
        var records: [String]

        var description: String {
            "devices: \(devices.keys.sorted()), loops: \(loops), files: \(files), records: \(records)"
        }
    }

    func picture() throws -> Picture {
        let state = kernel.capture()
        let orchestrator = try self.orchestrator()
        let records = try orchestrator.deviceSummaries().map { "device \($0.name) \($0.state)" }
            + orchestrator.snapshotSummaries().map { "snapshot \($0.name) \($0.state) \($0.storeSize.rawValue)" }
        return Picture(devices: state.devices, loops: state.loops.values.map(\.file).sorted(),
                       files: files(), records: records.sorted())
    }

    /// The COW stores and era metadata files under the state directory.
    func files() -> [String] {
        ["stores", "cbt"].flatMap { directory -> [String] in
            let path = stateDirectory.string + "/" + directory
            return ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).map { "\(directory)/\($0)" }
        }.sorted()
    }
}

/// Stops a verb at a failpoint, as SIGKILL does there.
struct SimulatedCrash: Error {
    var point: Failpoint
}

extension SimulatedLab {
    /// Runs `body` on a fresh orchestrator and crashes it at `point`: the kernel's state and the
    /// state directory are put back as they were at that instant, as a process killed there
    /// leaves them (the kernel stays; the database holds what was committed). Returns whether
    /// `body` reached `point`.
    func crash(at point: Failpoint, _ body: (Orchestrator) throws -> Void) throws -> Bool {
        var captured: SimulatedKernel.State?
        let copy = root + "/crashed-state"
        do {
            let orchestrator = try orchestrator()
            orchestrator.onFailpoint = { [self] reached in
                guard reached == point, captured == nil else { return }
                captured = kernel.capture()
                try FileManager.default.copyItem(atPath: stateDirectory.string, toPath: copy)
                // The shared-memory index is rebuilt by the first opener; a copy of a live one is not a crash.
                try? FileManager.default.removeItem(atPath: copy + "/snapstack.db-shm")
                throw SimulatedCrash(point: point)
            }
            _ = try? body(orchestrator)
        }
        guard let captured else { return false }
        try FileManager.default.removeItem(atPath: stateDirectory.string)
        try FileManager.default.moveItem(atPath: copy, toPath: stateDirectory.string)
        kernel.restore(captured)
        return true
    }

    /// What must hold after a reconcile, whatever came before: nothing suspended or half-loaded;
    /// exactly the dm devices the database records; every loop device on a recorded file and
    /// every recorded file attached; each top's table what its snapshots need; and a second
    /// reconcile with nothing left to do. Returns a description of each violation.
    func violationsAfterReconcile() throws -> [String] {
        var violations: [String] = []
        let orchestrator = try orchestrator()
        let left = try orchestrator.reconcile(dryRun: true)
        if !left.isEmpty { violations.append("a second reconcile would still do: \(left)") }
        let devices = try orchestrator.deviceSummaries()
        let snapshots = try orchestrator.snapshotSummaries()
        let state = kernel.capture()
        for (name, device) in state.devices.sorted(by: { $0.key < $1.key }) {
            if device.suspended { violations.append("\(name) is suspended") }
            if device.inactive != nil { violations.append("\(name) has an inactive table") }
        }
        var expected = Set<String>()
        for device in devices { expected.formUnion(["snapstack-\(device.name)", "snapstack-\(device.name)-real"]) }
        for snapshot in snapshots where snapshot.state != .merging { expected.insert("snapstack-\(snapshot.name)") }
        if Set(state.devices.keys) != expected {
            violations.append("dm devices \(state.devices.keys.sorted()) but the database records \(expected.sorted())")
        }
        // A store `vg/lv` is a logical volume, one starting with / a file; so is era metadata
        // in the volume group `metadataGroup`.
        let volumeStores = snapshots.filter { !$0.store.hasPrefix("/") }
        let metadataVolumes = metadataGroup == nil ? [] : devices.filter { $0.cbtBlock != nil }.map { "\(metadataGroup!)/snapstack-\($0.id)-era" }
        let volumes = try kernel.volumes(tagged: "snapstack")
        if Set(volumes.map(\.fullName)) != Set(volumeStores.map(\.store) + metadataVolumes) {
            violations.append("volumes \(volumes.map(\.fullName)) but the database records \(volumeStores.map(\.store) + metadataVolumes)")
        }
        let recordedFiles = snapshots.count - volumeStores.count + devices.filter { $0.cbtBlock != nil }.count - metadataVolumes.count
        let files = self.files()
        if files.count != recordedFiles { violations.append("files \(files) for \(recordedFiles) recorded") }
        let loopFiles = state.loops.values.map(\.file)
        if loopFiles.count != Set(loopFiles).count || loopFiles.count != files.count {
            violations.append("loop devices on \(loopFiles.sorted()) for files \(files)")
        }
        for file in loopFiles where !FileManager.default.fileExists(atPath: file) {
            violations.append("a loop device is on \(file), which is gone")
        }
        for device in devices {
            let live = state.devices["snapstack-\(device.name)"]?.live?.lines.first?.target.type
            let wanted = snapshots.contains { $0.origin == device.name && $0.state == .active } ? "snapshot-origin" : "linear"
            if live != wanted { violations.append("\(device.name)'s top is \(live ?? "absent"), not \(wanted)") }
        }
        return violations
    }

    /// Unprotects everything; afterwards the kernel must hold nothing of ours.
    func tearDown() throws -> [String] {
        let orchestrator = try orchestrator()
        for device in try orchestrator.deviceSummaries() { try orchestrator.unprotect(name: device.name, force: true) }
        let state = kernel.capture()
        var left: [String] = state.devices.keys.sorted() + state.loops.values.map(\.file)
        left += files() + (try kernel.volumes(tagged: "snapstack")).map(\.fullName)
        return left
    }
}
