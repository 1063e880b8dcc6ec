import BlockIO
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage
import Udev

/// How a device is protected.
public struct ProtectOptions: Sendable {
    /// The change-tracking granularity; nil protects without change tracking, and
    /// `automaticCBTBlock` picks it from the device's size (`cbtBlock(forDeviceSize:)`).
    public var cbtBlock: Bytes? = ProtectOptions.defaultCBTBlock
    /// An LVM volume group for the era metadata (a small volume `VG/snapstack-ID-era`) instead
    /// of a file in the state directory attached through a loop device: readable wherever LVM
    /// runs, before any file system is mounted.
    public var cbtMetadataGroup: String?
    /// For a device in use that cannot be adopted online (a mounted partition or disk): record
    /// it, and build its stack at the next boot, before anything mounts it. A device not in use
    /// is protected at once.
    public var atBoot = false
    /// Stands for "as the device's size asks" (no real block has zero bytes).
    public static let automaticCBTBlock = Bytes.zero
    public static let defaultCBTBlock = automaticCBTBlock
    public init(cbtBlock: Bytes? = ProtectOptions.defaultCBTBlock) { self.cbtBlock = cbtBlock }

    /// The smallest block the automatic choice makes. dm-era holds the first write to each
    /// block in an era until a metadata commit is on disk, and splits every I/O at block
    /// boundaries: 1 MiB keeps both off the write path of a backup cycle (Tests/bench/write-path.sh
    /// measures it: README, "Write-path cost and defaults"), at the price of incrementals that
    /// read up to 1 MiB for a scattered 4 KiB write.
    public static let minimumAutomaticCBTBlock = Bytes.mebibytes(1)
    /// The automatic block doubles until the device has at most this many blocks (blksnap's
    /// tracker does the same), which bounds the era metadata (about 8 bytes a block) and the
    /// time `era_invalidate` and an export spend walking it...
    public static let automaticCBTBlockCount: UInt64 = 1 << 21
    /// ...but never beyond this size (blksnap's limit too).
    public static let maximumAutomaticCBTBlock = Bytes.mebibytes(64)

    /// The change-tracking block for a device of `size` bytes: `minimumAutomaticCBTBlock`,
    /// doubled while the device would have more than `automaticCBTBlockCount` blocks, up to
    /// `maximumAutomaticCBTBlock`.
    public static func cbtBlock(forDeviceSize size: Bytes) -> Bytes {
        var block = minimumAutomaticCBTBlock.rawValue
        while size.rawValue / block > automaticCBTBlockCount && block < maximumAutomaticCBTBlock.rawValue { block *= 2 }
        return Bytes(block)
    }
}

extension Orchestrator {
    /// Smallest device worth protecting: the stack adds nothing useful below this.
    static let minimumDeviceSize = Bytes.mebibytes(1)

    /// Checks a name a person gave for a device or snapshot.
    static func checkName(_ name: String, what: String, maxLength: Int) throws {
        do { _ = try DMName(name) } catch {
            throw SnapstackError(.invalidArgument, "invalid \(what) name \(escapedForDisplay(name))", why: error.reason)
        }
        guard name.utf8.count <= maxLength else {
            throw SnapstackError(.invalidArgument, "invalid \(what) name", why: "longer than \(maxLength) characters")
        }
    }

    /// Wraps `devicePath` in the stack of DESIGN §2 and records it: `era` (or `linear` without
    /// change tracking) as the hidden `-real` layer, `linear` over it as the top device that the
    /// filesystem will use. A live device-mapper device (an LVM volume), mounted or not, is
    /// adopted online instead (`Adoption`). Refuses, changing nothing, a device that is in use
    /// (and not dm), ours, too small or already protected. Returns the device as `devices`
    /// reports it.
    @discardableResult
    public func protect(devicePath: String, name: String, options: ProtectOptions = ProtectOptions()) throws -> DeviceSummary {
        try Self.checkName(name, what: "device", maxLength: Layout.maxDeviceName)
        // `vg/lv`, as LVM names a volume, is /dev/vg/lv (unless it is a relative path here).
        var devicePath = devicePath
        if !devicePath.hasPrefix("/"), devicePath.split(separator: "/", omittingEmptySubsequences: false).count == 2,
           !devicePath.hasPrefix("."), !FileManager.default.fileExists(atPath: devicePath),
           FileManager.default.fileExists(atPath: "/dev/" + devicePath) {
            devicePath = "/dev/" + devicePath
        }
        if let existing = try database.device(named: name) {
            throw SnapstackError(.refused, "a device named \"\(name)\" is already protected",
                                 why: "it protects \(existing.sourcePath)", remedy: "choose another --name")
        }
        let facts: BlockDeviceFacts
        do { facts = try host.facts(of: FilePath(devicePath)) } catch {
            if case .system(_, let errno)? = (error as? BlockIOError)?.reason, errno == .noSuchFileOrDirectory {
                throw SnapstackError(.notFound, "no device \(devicePath.replacingNewlines)", remedy: "check the path (lsblk lists block devices)")
            }
            throw SnapstackError(.invalidArgument, "cannot protect \(devicePath.replacingNewlines)", why: "\(error)")
        }
        if let uuid = host.dmUUID(of: facts.number), uuid.hasPrefix(Layout.uuidPrefix) {
            throw SnapstackError(.refused, "cannot protect \(devicePath)", why: "it is one of snapstack's own devices")
        }
        if let other = try database.devices().first(where: { $0.sourceMajor == Int(facts.number.major) && $0.sourceMinor == Int(facts.number.minor) }) {
            throw SnapstackError(.refused, "\(devicePath) is already protected", why: "as \"\(other.name)\"",
                                 remedy: "use \(try other.topName().devicePath)")
        }
        let live = try foreignDeviceMapperName(of: facts.number)
        var pendingBecause: String?
        if live == nil, let why = try inUse(devicePath, facts.number) {
            guard options.atBoot else {
                throw SnapstackError(.refused, "cannot protect \(devicePath)", why: why + "; device-mapper can slide under a device in use only when it is a device-mapper device itself (an LVM volume)",
                                     remedy: "protect it with --at-boot (its stack is then built at the next boot, before anything mounts it), or unmount it and stop what uses it first")
            }
            pendingBecause = why
        }
        var options = options
        if options.cbtBlock == ProtectOptions.automaticCBTBlock {
            options.cbtBlock = ProtectOptions.cbtBlock(forDeviceSize: facts.size)
        }
        let cbtBlock = options.cbtBlock.map { Sectors($0.rawValue / Sectors.size) }
        if let block = options.cbtBlock {
            guard block.rawValue % 4096 == 0, block >= .kibibytes(4), block <= .gibibytes(1) else {
                throw SnapstackError(.invalidArgument, "invalid --cbt-block \(block.rawValue) bytes",
                                     why: "it must be a multiple of 4 KiB between 4 KiB and 1 GiB")
            }
        }
        let minimum = max(Self.minimumDeviceSize, options.cbtBlock ?? .zero)
        guard facts.size >= minimum else {
            throw SnapstackError(.refused, "cannot protect \(devicePath)",
                                 why: "it has \(facts.size.rawValue) bytes, fewer than the \(minimum.rawValue) snapstack needs")
        }

        var metadataGroup: String?
        if let group = options.cbtMetadataGroup, let cbtBlock {
            metadataGroup = try checkMetadataGroup(group, device: facts.number,
                                                   size: Self.metadataSize(blocks: facts.size.rawValue / Sectors.size / cbtBlock.rawValue + 1))
        }
        if let live {
            return try adopt(devicePath: devicePath, live: live, name: name, facts: facts, cbtBlock: cbtBlock, metadataGroup: metadataGroup)
        }
        let identity = host.identity(of: facts.number, size: facts.size) ?? DeviceIdentity(size: facts.size)
        if let why = pendingBecause {
            return try protectAtBoot(devicePath: devicePath, name: name, facts: facts, identity: identity, inUse: why,
                                     cbtBlock: cbtBlock, metadataGroup: metadataGroup)
        }
        if identity.isAnonymous {
            notice("warning: \(devicePath) has no serial, WWN, PARTUUID or filesystem UUID; after a reboot it is found again only at \(facts.number)")
        }

        var record = newRecord(name: name, devicePath: devicePath, facts: facts, identity: identity, cbtBlock: cbtBlock,
                               metadataGroup: metadataGroup)
        let id = record.id
        try database.insert(record)
        try reached(.protectRecorded)

        do {
            try buildStack(record, source: facts.number, newMetadata: true)
        } catch {
            throw rollingBack(error, [("remove the stack", { try self.removeStack(record) }),
                                      ("forget the device", { try self.database.deleteDevice(id: id) })])
        }
        record.state = .protected
        try database.update(record)
        refreshLVMFilter()
        event("protect", name, "protected \(devicePath) (\(facts.number)) as \(try record.topName().devicePath)")
        return try summary(of: record)
    }

    /// The record of a device being protected, with a new id and its era metadata's path: a
    /// file in the state directory, or `vg/lv` in `metadataGroup`.
    func newRecord(name: String, devicePath: String, facts: BlockDeviceFacts, identity: DeviceIdentity,
                   cbtBlock: Sectors?, metadataGroup: String?) -> DeviceRecord {
        let id = DeviceRecord.newID()
        let metadata = metadataGroup.map { "\($0)/\(Self.metadataVolumeName(deviceID: id))" } ?? metadataPath(deviceID: id).string
        return DeviceRecord(
            id: id, name: name, state: .protecting, sourcePath: devicePath,
            sourceMajor: Int(facts.number.major), sourceMinor: Int(facts.number.minor),
            sizeBytes: Int64(facts.size.rawValue), wwn: identity.wwn, serial: identity.serial,
            partUUID: identity.partUUID, fsUUID: identity.fsUUID,
            cbtBlockSectors: cbtBlock.map { Int($0.rawValue) },
            eraMetadataPath: cbtBlock == nil ? nil : metadata, createdAt: Date())
    }

    static func metadataVolumeName(deviceID: String) -> String { "snapstack-\(deviceID)-era" }

    /// A recorded era metadata path names a file (absolute) or a logical volume (`vg/lv`).
    static func metadataVolume(_ path: String) -> (group: String, name: String)? {
        path.hasPrefix("/") ? nil : try? volumeParts(path)
    }

    /// A volume group that can hold era metadata of `size` for the device `number`.
    private func checkMetadataGroup(_ name: String, device number: DeviceNumber, size: Bytes) throws -> String {
        let group = try volumeGroup(name, for: "the change-tracking metadata", avoiding: [number], otherwise: "leave out --cbt-metadata")
        let needed = group.allocation(for: size)
        guard needed <= group.free else {
            throw SnapstackError(.refused, "the volume group \(name) has \(Self.describe(group.free)) free; the change-tracking metadata needs \(Self.describe(needed))",
                                 remedy: "add a disk to it (vgextend), or leave out --cbt-metadata")
        }
        return name
    }

    /// Why a device that is not a dm device cannot take a stack now (mounted, open, held), in
    /// one sentence; nil when it can.
    func inUse(_ devicePath: String, _ number: DeviceNumber) throws -> String? {
        var usage = DeviceUsage()
        try failing("cannot tell whether \(devicePath) is in use") { usage = try host.usage(of: FilePath(devicePath)) }
        if let reason = usage.reason { return reason }
        // udev's probe of a disk that just appeared holds it for a moment: only a holder that
        // stays for a second counts.
        var openers = host.openers(of: number)
        for _ in 0..<10 where !openers.isEmpty {
            usleep(100_000)
            openers = host.openers(of: number)
        }
        return openers.first.map { "it is open by process \($0)" }
    }

    /// Records a device in use as pending (`--at-boot`): nothing changes on it now; reconcile,
    /// which the daemon runs at start, builds its stack at the next boot before the local file
    /// systems are mounted (`buildPendingStack`).
    private func protectAtBoot(devicePath: String, name: String, facts: BlockDeviceFacts, identity: DeviceIdentity, inUse why: String,
                               cbtBlock: Sectors?, metadataGroup: String?) throws -> DeviceSummary {
        let root = try host.usage(of: FilePath(devicePath)).mountPoints.contains("/")
        if root, cbtBlock != nil, metadataGroup == nil {
            throw SnapstackError(.refused, "cannot protect \(devicePath) --at-boot", why: "it holds /, which the initramfs mounts: its change-tracking metadata must be readable before / is, and a file in the state directory is not",
                                 remedy: "give --cbt-metadata VG, a volume group on another disk, for a small volume of its own")
        }
        guard !identity.isAnonymous else {
            throw SnapstackError(.refused, "cannot protect \(devicePath) --at-boot", why: "it has no serial, WWN, PARTUUID or filesystem UUID to be recognised by at the next boot")
        }
        var record = newRecord(name: name, devicePath: devicePath, facts: facts, identity: identity, cbtBlock: cbtBlock,
                               metadataGroup: metadataGroup)
        record.state = .pending
        try database.insert(record)
        if root {
            // The initramfs builds the first stack: the metadata must exist before, zeroed so
            // that dm-era formats it then. The hook reads the record from the database, so the
            // state lock is let go while update-initramfs (or dracut) runs it.
            do {
                if let (group, volume) = record.eraMetadataVolume, let blockSectors = record.cbtBlockSectors {
                    let blocks = UInt64(record.sizeBytes) / Sectors.size / UInt64(blockSectors) + 1
                    try failing("cannot create the change-tracking metadata volume \(group)/\(volume)") {
                        try volumes.createVolume(group: group, name: volume, size: Self.metadataSize(blocks: blocks), tag: Self.volumeTag)
                    }
                }
                try prepareBootStack(record)
            } catch {
                let id = record.id
                throw rollingBack(error, [("remove the change-tracking metadata volume", { if let path = record.eraMetadataPath { try self.run([TeardownStep.detachMetadata(path: path, delete: true)]) } }),
                                          ("remove the shutdown record's volume", { if let (group, name) = record.stopVolume { try self.volumes.removeVolume(group: group, name: name) } }),
                                          ("forget the device", { try self.database.deleteDevice(id: id) })])
            }
        }
        event("protect", name, "pending: cannot stack \(devicePath) (\(facts.number)) now (\(why)); its stack is built at the next boot"
              + (root ? " by the initramfs" : ""))
        notice("cannot stack \(devicePath) now (\(why)): its stack is built at the next boot, before anything mounts it; until then no change is tracked")
        return try summary(of: record)
    }

    /// For a device that holds /: the volume where a clean shutdown records its filesystem for
    /// the next boot (zeroed: no record yet), and the initramfs made again, with the record the
    /// hook reads from the database (so the state lock is let go meanwhile).
    func prepareBootStack(_ record: DeviceRecord) throws {
        if let (group, volume) = record.stopVolume {
            try failing("cannot create the shutdown record's volume \(group)/\(volume)") {
                try volumes.createVolume(group: group, name: volume, size: .mebibytes(1), tag: Self.volumeTag)
            }
        }
        notice("making the initramfs, which stacks / at boot (\(host.initramfsCommand))...")
        try failing("cannot make the initramfs that stacks /") { try withStateLockReleased { try host.updateInitramfs() } }
    }

    /// The first stack of a device protected `--at-boot`, over its disk found at `source`, with
    /// new era metadata. A failure removes what was built: the device stays pending.
    func buildPendingStack(_ device: DeviceRecord, sourcePath: String, source: DeviceNumber) throws {
        var record = device
        record.sourcePath = sourcePath
        record.sourceMajor = Int(source.major)
        record.sourceMinor = Int(source.minor)
        if record != device { try database.update(record) }
        do {
            try buildStack(record, source: source, newMetadata: true)
        } catch {
            throw rollingBack(error, [("remove the stack", { try self.removeStack(record) })])
        }
        record.state = .protected
        try database.update(record)
        event("protect", record.name, "protected \(sourcePath) (\(source)) as \(try record.topName().devicePath), as protect --at-boot asked")
    }

    /// Era metadata size for `blocks` tracked blocks: the era array takes 4 bytes a block in a
    /// btree, each writeset a bit a block, plus the space maps; the file is sparse, so only what
    /// the kernel writes is allocated.
    static func metadataSize(blocks: UInt64) -> Bytes {
        let bytes = Bytes.mebibytes(4).rawValue + blocks * 8
        return Bytes((bytes + 0xFFFFF) & ~0xFFFFF)
    }

    /// Builds (or completes) the stack of `device` over the disk at `source` (`StackBuild`).
    /// With `newMetadata`, new era metadata is made; without, the recorded one is attached so
    /// that change tracking continues, and the recorded snapshots come back before the top.
    func buildStack(_ device: DeviceRecord, source: DeviceNumber, newMetadata: Bool) throws {
        try run(try StackBuild.plan(device, newMetadata: newMetadata, withSnapshots: !newMetadata), for: device, source: source)
    }

    /// Removes the stack of `device` top-down and detaches its metadata; idempotent. The disk
    /// keeps every byte: no layer stores data of its own.
    func removeStack(_ device: DeviceRecord, deleteMetadata: Bool = true) throws {
        try run(try Teardown.removeStack(device, deleteMetadata: deleteMetadata))
    }

    /// Tears the stack of `name` down, leaving the disk as it was. Refuses while the top device
    /// is open or snapshots exist, unless `force` drops the snapshots first.
    public func unprotect(name: String, force: Bool = false) throws {
        var device = try device(named: name)
        let top = try device.topName()
        // An adopted device stays where it is, mounted or not: only the layers under it go.
        if !device.isAdopted, let info = try dm.info(top), info.openCount > 0 {
            throw SnapstackError(.refused, "cannot unprotect \(name)", why: "\(top.devicePath) is open (\(info.openCount) opener(s): mounted or in use)",
                                 remedy: "unmount it and stop what uses it")
        }
        let snapshots = try database.snapshots(deviceID: device.id)
        if !snapshots.isEmpty {
            guard force else {
                throw SnapstackError(.refused, "cannot unprotect \(name)", why: "it has \(snapshots.count) snapshot(s): \(snapshots.map { "\(name)-\($0.name)" }.joined(separator: ", "))",
                                     remedy: "drop them, or use --force to drop them")
            }
            for snapshot in snapshots { try drop(snapshot, of: device) }
        }
        // The initramfs of a pending root must forget it too, or it would stack it at boot.
        let initramfsKnowsIt = holdsRoot(device)
        device.state = .unprotecting
        try database.update(device)
        try reached(.unprotectRecorded)
        try run(try Teardown.unprotect(device))
        refreshLVMFilter()
        event("unprotect", name, "stack removed from \(device.sourcePath)")
        if initramfsKnowsIt {
            do { try withStateLockReleased { try host.updateInitramfs() } } catch {
                notice("warning: \(error); the initramfs still stacks \(device.sourcePath) at boot: run `\(host.initramfsCommand)`")
            }
        }
    }

    // MARK: Loop devices of our files

    /// Attaches `file` to a loop device, or returns the one it is already attached to.
    func attach(_ file: FilePath) throws -> LoopDevice {
        var result: LoopDevice?
        try failing("cannot attach \(file) to a loop device") {
            if let existing = try host.loops(backing: file.string).first {
                result = existing
            } else {
                // Direct I/O: the file's pages are not cached twice, and a flush from the
                // layer above (every COW and era metadata commit sends one) only has to make
                // the file system's metadata durable instead of writing back dirty pages too.
                // Measured with dm-snapshot, 4 KiB chunks, store on ext4 on a RAM disk: 1M
                // sequential first writes 124 MiB/s against 70 buffered (the bare disk: 139).
                let directIO = host.fileSystem(of: file.removingLastComponent())?.loopDirectIOIsSafe ?? false
                let loop = try host.attachLoop(file: file, directIO: directIO)
                // Write back, the kernel's default for a loop device, is always safe: a
                // failure to settle the mode only leaves that.
                _ = try? settleWriteCache(loop, of: file)
                result = loop
            }
        }
        return result!
    }

    /// Tells the kernel that the loop device of `file` has no volatile write cache ("write
    /// through") when a flush through it would make nothing durable, and that it has one
    /// ("write back") otherwise; returns the mode set.
    ///
    /// Every COW and era metadata commit sends a flush and a FUA write. On a loop device a flush
    /// is an fsync of its file, and even for a file whose blocks are all written the fsync
    /// commits the file system's journal, for the file's modification time alone: at 4 KiB
    /// chunks that cost a file store a quarter of its speed against a COW volume. The flush is
    /// needless, and the mode "write through", when all of these hold: the loop device does
    /// direct I/O (a completed write is not in the page cache); the file system overwrites in
    /// place and every block of the file is allocated and written (a write changes none of its
    /// metadata, so nothing of it waits in the journal: `FileAllocation.isFullyWritten`); and
    /// the device under the file system has no volatile cache itself (a completed write is on
    /// stable media). Anything unknown means "write back". A growth that brings blocks not
    /// written yet must settle the mode again before the loop device takes the new size.
    @discardableResult
    func settleWriteCache(_ loop: LoopDevice, of file: FilePath) throws -> WriteCache {
        var status = stat()
        let needless = (try? host.loopUsesDirectIO(loop)) == true
            && host.fileSystem(of: file.removingLastComponent())?.overwritesInPlace == true
            && (try? host.isFullyWritten(file)) == true
            && stat(file.string, &status) == 0
            && host.writeCache(of: DeviceNumber(status.st_dev)) == .writeThrough
        let mode: WriteCache = needless ? .writeThrough : .writeBack
        let name = String(loop.path.split(separator: "/").last ?? "")
        do {
            try host.setWriteCache(mode, ofDeviceNamed: name)
        } catch {
            throw SnapstackError(.failed, "cannot set the write cache of \(loop.path) to \(mode.rawValue)", why: "\(error)", cause: error)
        }
        return mode
    }

    /// Refuses a file system on which a file cannot be promised room for its next write:
    /// there a full pool would make dm-era fail the origin's writes.
    func checkMetadataFileSystem(_ directory: FilePath) throws {
        guard let type = host.fileSystem(of: directory), type.alwaysCopiesOnWrite else { return }
        throw SnapstackError(.refused, "change-tracking metadata cannot be kept on \(directory)",
                             why: "it is on \(type), which allocates anew for every write: once the pool is full, dm-era could not commit and would fail the device's own writes",
                             remedy: "put the metadata on a volume (--cbt-metadata VG), or use a state directory (--state-dir) on ext4, xfs or btrfs")
    }

    /// `amount` of zeros to write into a new part of `file` (see `FileAllocation.writeZeros`)
    /// where its file system overwrites in place, and none elsewhere, where writing ahead
    /// would buy nothing.
    func zeroFill(_ amount: Bytes, for file: FilePath) -> Bytes {
        (host.fileSystem(of: file.removingLastComponent())?.overwritesInPlace ?? false) ? amount : .zero
    }

    /// Detaches every loop device backed by `file`; idempotent.
    func detach(_ file: FilePath) throws {
        try failing("cannot detach the loop device of \(file)") {
            for loop in try host.loops(backing: file.string) { try host.detachLoop(loop.path) }
        }
    }
}
