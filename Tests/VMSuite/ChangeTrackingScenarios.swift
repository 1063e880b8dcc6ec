import BlockIO
import ChangeTracking
import CShims
import DeviceMapper
import Foundation
import SystemPackage

/// The native dm-era metadata reader against `era_invalidate` on the real kernel's metadata.
///
/// thin-provisioning-tools 0.9.0 (Debian 12) reads the *live* superblock's roots even with
/// `--metadata-snapshot`, so its answer is the snapshot's only at the moment the snapshot is
/// taken. Each witness is therefore captured right after `take_metadata_snap`; then the live
/// metadata is made to move on (more writes, checkpoints, a re-created device) before the native
/// reader reads the held snapshot, which must still give the captured answer.
enum ChangeTrackingScenarios {
    static let all: [Scenario] = [
        Scenario("change tracking: native reader equals era_invalidate on randomised workloads", randomised).lasting(320).nightly(),
        Scenario("change tracking: fixture workloads (captured for the unit tests with --capture)", fixtures),
    ]

    /// The number of randomised workloads; each takes one or two snapshots.
    static let workloadCount = 20

    // MARK: Randomised workloads

    static func randomised(_ lab: Lab) throws {
        let seed = ProcessInfo.processInfo.environment["SNAPSTACK_CT_SEED"].flatMap(UInt64.init)
            ?? UInt64(Date().timeIntervalSince1970 * 1000)
        print("      change tracking seed \(seed) (SNAPSTACK_CT_SEED=\(seed) repeats this run)")
        var random = SplitMix64(seed: seed)
        var totals = Totals()
        // One pair of loop devices for all the workloads: a sparse data device as long as the
        // longest, and metadata whose superblock is zeroed between workloads, which makes the era
        // target format it afresh. (Loop devices and process starts are what is slow in the lab.)
        let data = try lab.loopDevice("ct-data", size: WorkloadShape.largestData)
        let metadata = try lab.loopDevice("ct-meta", size: .mebibytes(8))
        for index in 0..<workloadCount {
            let shape = WorkloadShape.random(index: index, using: &random)
            do {
                try EraDevice.wipeSuperblock(metadata.path)
                let device = try EraDevice(lab, label: "ct", data: data.path, metadata: metadata.path, shape: shape)
                defer { device.close() }
                try runWorkload(lab, device: device, index: index, random: &random, totals: &totals)
                try device.remove()
                totals.deviceSeconds += device.deviceSeconds
            } catch {
                throw Failure(description: "workload \(index) (\(shape), seed \(seed)): \(error)")
            }
        }
        print("      \(totals)")
        // What the workloads must have covered for the comparison to mean something.
        try expect(totals.snapshotsWithDigestedEras > 0, "no snapshot held eras digested into the era array: \(totals)")
        try expect(totals.recreations > 0, "no era device was re-created on its metadata: \(totals)")
        try expect(totals.divergedSnapshots > 0, "the live metadata never moved on past a held snapshot: \(totals)")
    }

    struct Totals: CustomStringConvertible {
        var comparisons = 0, snapshots = 0, eras = 0, recreations = 0, divergedSnapshots = 0
        var snapshotsWithDigestedEras = 0, snapshotsWithSeveralArchivedEras = 0
        /// Where the time goes (the lab's TCG VM is slow at process starts and device changes).
        var witnessSeconds = 0.0, nativeSeconds = 0.0, deviceSeconds = 0.0
        var description: String {
            "\(comparisons) comparisons with era_invalidate over \(snapshots) snapshots and \(eras) eras; "
                + "\(recreations) re-creations; \(divergedSnapshots) snapshots read after the live metadata moved on; "
                + "\(snapshotsWithDigestedEras) with digested eras, \(snapshotsWithSeveralArchivedEras) with several archived writesets; "
                + String(format: "%.1f s in era_invalidate, %.1f s in the native reader, %.1f s creating and removing devices",
                         witnessSeconds, nativeSeconds, deviceSeconds)
        }
    }

    /// The size and granularity of one workload's era device.
    struct WorkloadShape: CustomStringConvertible {
        var blockSize: Sectors
        /// The era device's length; not always a multiple of the block size.
        var length: Sectors
        var rounds: Int

        static let largestData = Bytes.mebibytes(136)

        var blockCount: UInt64 { (length.rawValue + blockSize.rawValue - 1) / blockSize.rawValue }
        var description: String { "\(blockCount) blocks of \(blockSize), \(length) long" }

        static func random(index: Int, using random: inout SplitMix64) -> WorkloadShape {
            // 24 and 40 sectors are not powers of two: the kernel divides instead of shifting.
            var blockSize = Sectors([8, 8, 16, 24, 40, 64, 128, 1024][Int(random.below(8))])
            let mebibytes: UInt64
            if index == 0 {
                // Over 32,576 blocks of 4 KiB: a writeset bitset spans several array blocks, the
                // era array over 32 (era_invalidate's time grows with the block count: one such
                // workload is enough).
                blockSize = Sectors(8)
                mebibytes = 128 + random.below(8)
            } else {
                mebibytes = 1 + random.below(16)
            }
            let whole = mebibytes << 11
            // Half the devices end inside a block.
            let length = Sectors(random.below(2) == 0 ? whole : whole - 1 - random.below(blockSize.rawValue - 1))
            return WorkloadShape(blockSize: blockSize, length: length, rounds: 1 + Int(random.below(2)))
        }
    }

    /// Writes, checkpoints and re-creations on a fresh era device, with a snapshot at the end of
    /// each round read both ways. The era is predicted (every checkpoint, re-creation and
    /// snapshot starts the next one) and checked against the status line at each snapshot.
    static func runWorkload(_ lab: Lab, device: EraDevice, index: Int, random: inout SplitMix64,
                            totals: inout Totals) throws {
        let shape = device.shape
        try device.create()
        var model = EraModel(blockSize: shape.blockSize)
        // A fresh metadata device starts at era 0, and resuming the target starts era 1.
        model.era = 1

        for round in 0..<shape.rounds {
            // Writes with checkpoints among them: many eras, each with a few blocks.
            for _ in 0..<(4 + random.below(10)) {
                switch random.below(10) {
                case 0, 1, 2:
                    try device.checkpoint()
                    model.era += 1
                case 3 where random.below(6) == 0:
                    try device.recreate()
                    totals.recreations += 1
                    model.era += 1
                default:
                    let write = Write.random(length: shape.length, blockSize: shape.blockSize, using: &random)
                    try device.write(write, using: &random)
                    model.record(write)
                }
            }
            // Give the kernel's digest time to fold archived writesets into the era array in
            // some rounds, and none in others.
            if random.below(2) == 0 { Thread.sleep(forTimeInterval: 0.2) }

            try device.takeSnapshot()
            model.era += 1
            let snapshotEra = model.era
            try expectEqual(try device.era(), snapshotEra, "era after take_metadata_snap (predicted from the messages sent)")
            // The witness, captured before anything else happens to the metadata.
            // (era_invalidate takes a second or more per call in the lab: two eras for a
            // workload's first snapshot, one for the next; the record of the writes checks more.)
            var sinceValues: Set<UInt32> = [1 + UInt32(random.below(UInt64(snapshotEra - 1)))]
            if round == 0 { sinceValues.insert(snapshotEra - 1) }
            if index % 7 == 3 && round == 0 { sinceValues.insert(0) }
            var witnessed: [UInt32: Set<UInt64>] = [:]
            for since in sinceValues.sorted() {
                let started = Date()
                let blocks = try EraScenarios.invalidated(lab, metadata: device.metadata, since: since)
                totals.witnessSeconds += Date().timeIntervalSince(started)
                // The scenario's own record of what it wrote checks the witness in turn.
                try expectEqual(blocks, model.blocks(since: since, count: shape.blockCount),
                                "era_invalidate since \(since) against the writes made")
                witnessed[since] = blocks
            }
            let snapshotModel = model

            // The live metadata moves on while the snapshot is held.
            let steps = random.below(4)
            for _ in 0..<steps {
                switch random.below(6) {
                case 0:
                    try device.checkpoint()
                    model.era += 1
                case 1:
                    try device.recreate()
                    totals.recreations += 1
                    model.era += 1
                default:
                    let write = Write.random(length: shape.length, blockSize: shape.blockSize, using: &random)
                    try device.write(write, using: &random)
                    model.record(write)
                }
            }
            if steps > 0 { totals.divergedSnapshots += 1 }

            let nativeStarted = Date()
            defer { totals.nativeSeconds += Date().timeIntervalSince(nativeStarted) }
            let reader = try EraMetadata(path: FilePath(device.metadata))
            let status = try EraScenarios.currentEra(lab, device.name)
            try expectEqual(status.currentEra, model.era, "era (predicted from the messages sent)")
            try expectEqual(reader.superblock.currentEra, status.currentEra, "live superblock's era")
            try expectEqual(reader.superblock.metadataSnapshot, status.heldMetadataRoot, "live superblock's held snapshot")
            try expectEqual(reader.superblock.blockSize, shape.blockSize, "live superblock's block size")
            try expectEqual(reader.superblock.blockCount, shape.blockCount, "live superblock's block count")
            try expect(reader.usesDirectIO, "the metadata loop device was read without O_DIRECT")
            for (since, expected) in witnessed.sorted(by: { $0.key < $1.key }) {
                let ranges = try reader.changedBlocks(since: since)
                try expectEqual(ChangedRanges(coalescing: ranges).ranges, ranges, "native ranges since \(since) are not sorted and coalesced")
                try expectEqual(blockSet(ranges), expected, "native ranges since \(since) (snapshot era \(snapshotEra))")
                totals.comparisons += 1
            }
            // Eras era_invalidate was not asked about, against the record of the writes.
            for since in [snapshotEra, snapshotEra + 1, snapshotEra - 1, UInt32(random.below(UInt64(snapshotEra)))] {
                try expectEqual(blockSet(try reader.changedBlocks(since: since)),
                                snapshotModel.blocks(since: since, count: shape.blockCount),
                                "native ranges since \(since) against the writes made (snapshot era \(snapshotEra))")
            }
            let inventory = try reader.inventory()
            try expectEqual(inventory.snapshot.currentEra, snapshotEra, "snapshot superblock's era")
            totals.snapshots += 1
            if inventory.digestedBlocks > 0 { totals.snapshotsWithDigestedEras += 1 }
            if inventory.archivedEras.count > 1 { totals.snapshotsWithSeveralArchivedEras += 1 }

            try device.dropSnapshot()
            let error = try expectThrows("changed blocks without a held snapshot") {
                _ = try reader.changedBlocks(since: 1)
            }
            try expectEqual((error as? EraMetadataError)?.reason, .noMetadataSnapshot, "error without a snapshot: \(error)")
        }
        totals.eras += Int(model.era)
    }

    static func blockSet(_ ranges: [Range<UInt64>]) -> Set<UInt64> {
        var blocks = Set<UInt64>()
        for range in ranges { blocks.formUnion(range) }
        return blocks
    }

    // MARK: Fixtures

    /// Two fixed workloads whose metadata images and `era_invalidate` answers become the unit
    /// tests' fixtures under `--capture DIR` (in DIR/era-metadata/); without it they are checked
    /// like the randomised ones.
    static func fixtures(_ lab: Lab) throws {
        var random = SplitMix64(seed: 20_261_125)
        // Small: 2048 blocks of 4 KiB; the era array spans three array blocks.
        let small = Sectors(16384)
        try fixture(lab, label: "era-small", shape: WorkloadShape(blockSize: Sectors(8), length: small, rounds: 1),
                    sinceValues: { [0, 1, 2, $0 / 2, $0 - 1, $0] }, random: &random) { device, model, random in
            for era in 0..<12 {
                for _ in 0..<(1 + era % 3) {
                    let write = Write.random(length: small, blockSize: Sectors(8), using: &random)
                    try device.write(write, using: &random)
                    model.record(write)
                }
                if era == 5 { try device.recreate() } else { try device.checkpoint() }
                model.era += 1
                if era == 8 { Thread.sleep(forTimeInterval: 0.5) }
            }
        }
        // Large: 262,145 blocks of 4 KiB, the last one partial; the era array's btree has an
        // internal root over 258 array blocks (a leaf holds 252), and each writeset spans nine.
        // era_invalidate takes seconds per call here, so it is asked about three eras.
        let large = Sectors(262_144 * 8 + 4)
        try fixture(lab, label: "era-large", shape: WorkloadShape(blockSize: Sectors(8), length: large, rounds: 1),
                    sinceValues: { [1, $0 / 2, $0 - 1] }, random: &random) { device, model, random in
            for era in 0..<4 {
                for _ in 0..<3 {
                    let write = Write.random(length: large, blockSize: Sectors(8), using: &random)
                    try device.write(write, using: &random)
                    model.record(write)
                }
                if era == 2 {
                    let last = Write(offset: large - Sectors(1), length: Sectors(1))
                    try device.write(last, using: &random)
                    model.record(last)
                }
                try device.checkpoint()
                model.era += 1
                if era == 1 { Thread.sleep(forTimeInterval: 1) }
            }
        }
    }

    static func fixture(_ lab: Lab, label: String, shape: WorkloadShape, sinceValues: (UInt32) -> Set<UInt32>,
                        random: inout SplitMix64,
                        _ workload: (EraDevice, inout EraModel, inout SplitMix64) throws -> Void) throws {
        let data = try lab.loopDevice(label + "-data", size: Bytes(((shape.length.rawValue + 2047) / 2048) << 20))
        let metadata = try lab.loopDevice(label + "-meta", size: .mebibytes(4))
        let device = try EraDevice(lab, label: label, data: data.path, metadata: metadata.path, shape: shape)
        defer { device.close() }
        try device.create()
        var model = EraModel(blockSize: shape.blockSize)
        model.era = 1
        try workload(device, &model, &random)

        try device.takeSnapshot()
        model.era += 1
        let snapshotEra = model.era
        try expectEqual(try device.era(), snapshotEra, "era after take_metadata_snap (predicted from the messages sent)")
        var witnessed: [(since: UInt32, xml: String, blocks: Set<UInt64>)] = []
        for since in sinceValues(snapshotEra).sorted() {
            let xml = try lab.sh("era_invalidate", "--metadata-snapshot", "--written-since", "\(since)", metadata.path)
            let blocks = try EraScenarios.invalidatedBlocks(xml: xml)
            try expectEqual(blocks, model.blocks(since: since, count: shape.blockCount), "era_invalidate since \(since)")
            witnessed.append((since, xml, blocks))
        }
        // Past the witness, the live metadata moves on: the fixture's live superblock is not the
        // snapshot's, as it would not be for a real export.
        for _ in 0..<3 {
            let write = Write.random(length: shape.length, blockSize: shape.blockSize, using: &random)
            try device.write(write, using: &random)
            try device.checkpoint()
        }
        let reader = try EraMetadata(path: FilePath(metadata.path))
        for (since, _, blocks) in witnessed {
            try expectEqual(blockSet(try reader.changedBlocks(since: since)), blocks, "native ranges since \(since)")
        }
        guard let directory = lab.captureDirectory?.appendingPathComponent("era-metadata") else { return }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for (since, xml, _) in witnessed {
            try xml.write(to: directory.appendingPathComponent("\(label).since-\(since).xml"), atomically: true, encoding: .utf8)
        }
        try (try lab.dmsetupStatus(device.name) + "\n")
            .write(to: directory.appendingPathComponent("\(label).status"), atomically: true, encoding: .utf8)
        try writeCompactImage(of: lab.scratch.appendingPathComponent(label + "-meta.img").path,
                              to: directory.appendingPathComponent("\(label).metadata").path)
    }

    /// Writes the non-zero 4 KiB blocks of `source` in the fixture format the unit tests read
    /// (Tests/ChangeTrackingTests/Fixtures/README.md): "SSERAIMG", the image's block count
    /// (le64), the number of stored blocks (le64), their block numbers (le64 each, ascending),
    /// then each block as runs of (zero bytes: le16, literal bytes: le16, the literal bytes) that
    /// add up to 4096 — metadata blocks are mostly zeros.
    static func writeCompactImage(of source: String, to destination: String) throws {
        let image = [UInt8](try Data(contentsOf: URL(fileURLWithPath: source)))
        let blockSize = 4096
        var numbers: [UInt64] = []
        var contents: [UInt8] = []
        func le16(_ value: Int) { contents += [UInt8(value & 0xFF), UInt8(value >> 8)] }
        for start in stride(from: 0, to: image.count - blockSize + 1, by: blockSize) {
            let block = image[start..<start + blockSize]
            guard block.contains(where: { $0 != 0 }) else { continue }
            numbers.append(UInt64(start / blockSize))
            var position = start
            let end = start + blockSize
            while position < end {
                var zeros = 0
                while position + zeros < end && image[position + zeros] == 0 { zeros += 1 }
                // A literal run ends at eight zero bytes or more: shorter gaps cost less inline.
                var literal = position + zeros
                while literal < end {
                    var gap = 0
                    while literal + gap < end && gap < 8 && image[literal + gap] == 0 { gap += 1 }
                    if gap == 8 || literal + gap == end { break }
                    literal += gap + 1
                }
                le16(zeros)
                le16(literal - position - zeros)
                contents += image[(position + zeros)..<literal]
                position = literal
            }
        }
        var output = Data("SSERAIMG".utf8)
        for value in [UInt64(image.count / blockSize), UInt64(numbers.count)] + numbers {
            withUnsafeBytes(of: value.littleEndian) { output.append(contentsOf: $0) }
        }
        output.append(contentsOf: contents)
        try output.write(to: URL(fileURLWithPath: destination))
    }
}

// MARK: The era device under test

extension ChangeTrackingScenarios {

    /// An era device over loop devices, written with O_DIRECT at 512-byte granularity so that
    /// writes can be smaller than and straddle the era blocks.
    final class EraDevice {
        let lab: Lab
        let name: DMName
        let uuid: DMUUID
        let table: Table
        let shape: ChangeTrackingScenarios.WorkloadShape
        /// The metadata device.
        let metadata: String
        private var descriptor: FileDescriptor?
        private let buffer: UnsafeMutableRawBufferPointer

        static let largestWrite = Sectors(2048)

        init(_ lab: Lab, label: String, data: String, metadata: String, shape: ChangeTrackingScenarios.WorkloadShape) throws {
            self.lab = lab
            (name, uuid) = try lab.name(label)
            self.shape = shape
            self.metadata = metadata
            table = try Table(length: shape.length, .era(Era(metadata: .path(metadata), origin: .path(data), blockSize: shape.blockSize)))
            buffer = .allocate(byteCount: Int(Self.largestWrite.bytes.rawValue), alignment: 4096)
            lab.track(name)
        }

        deinit { buffer.deallocate() }

        /// Zeroes block 0 of a metadata device with O_DIRECT (past any cache): the era target
        /// formats metadata whose superblock is all zeros (`superblock_all_zeroes`).
        static func wipeSuperblock(_ metadata: String) throws {
            let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
            defer { zeros.deallocate() }
            zeros.initializeMemory(as: UInt8.self, repeating: 0)
            let descriptor = try FileDescriptor.open(FilePath(metadata), .readWrite,
                                                     options: FileDescriptor.OpenOptions(rawValue: snapstack_O_DIRECT))
            defer { try? descriptor.close() }
            try expectEqual(try descriptor.write(toAbsoluteOffset: 0, UnsafeRawBufferPointer(zeros)), 4096,
                            "bytes zeroed at the start of \(metadata)")
        }

        /// Time spent creating and removing the device.
        private(set) var deviceSeconds = 0.0

        func create() throws {
            let started = Date()
            defer { deviceSeconds += Date().timeIntervalSince(started) }
            // As snapstack's own era layer: no blkid probe or by-* links for it, which under TCG
            // would make each creation cost seconds.
            try lab.dm.create(name, uuid: uuid, table: table, udevFlags: .hiddenLayer)
            descriptor = try FileDescriptor.open(FilePath(name.devicePath), .readWrite,
                                                 options: FileDescriptor.OpenOptions(rawValue: snapstack_O_DIRECT))
        }

        func close() {
            try? descriptor?.close()
            descriptor = nil
        }

        /// Removes the device and creates it again on the same metadata: the kernel archives the
        /// current era when the old one is suspended and starts a new era when the new one resumes.
        func recreate() throws {
            try remove()
            try create()
        }

        func remove() throws {
            close()
            let started = Date()
            defer { deviceSeconds += Date().timeIntervalSince(started) }
            _ = try lab.dm.remove(name)
        }

        func era() throws -> UInt32 { try EraScenarios.currentEra(lab, name).currentEra }
        func checkpoint() throws { try lab.dm.message(name, era: .checkpoint) }
        func takeSnapshot() throws { try lab.dm.message(name, era: .takeMetadataSnapshot) }
        func dropSnapshot() throws { try lab.dm.message(name, era: .dropMetadataSnapshot) }

        /// `pwrite(2)` of random bytes; with O_DIRECT it returns once the era target has marked the
        /// blocks and committed its metadata.
        func write(_ write: Write, using random: inout SplitMix64) throws {
            guard let descriptor else { throw Failure(description: "\(name) is not open") }
            let bytes = Int(write.length.bytes.rawValue)
            for offset in stride(from: 0, to: bytes, by: 8) {
                buffer.storeBytes(of: random.next(), toByteOffset: offset, as: UInt64.self)
            }
            // One pwrite(2) straight from the aligned buffer: O_DIRECT needs its alignment, and
            // a short count on a block device is a failure here, not something to continue.
            let written: Int
            do {
                written = try descriptor.write(toAbsoluteOffset: Int64(write.offset.bytes.rawValue),
                                               UnsafeRawBufferPointer(rebasing: buffer[..<bytes]))
            } catch {
                throw Failure(description: "writing \(write) to \(name): \(error)")
            }
            try expectEqual(written, bytes, "bytes written to \(name) for \(write)")
        }
    }

    /// One write, in sectors of the era device.
    struct Write: CustomStringConvertible {
        var offset: Sectors
        var length: Sectors
        var description: String { "\(length) at \(offset)" }

        static func random(length deviceLength: Sectors, blockSize: Sectors, using random: inout SplitMix64) -> Write {
            let total = deviceLength.rawValue, block = blockSize.rawValue
            var offset: UInt64, length: UInt64
            switch random.below(6) {
            case 0:  // small, anywhere, 512-byte aligned
                length = 1 + random.below(8)
                offset = random.below(total)
            case 1:  // exactly one era block
                length = block
                offset = random.below(total / block) * block
            case 2:  // straddling a block boundary
                let boundary = (1 + random.below(max(1, total / block - 1))) * block
                let before = 1 + random.below(min(block, 16))
                offset = boundary - before
                length = before + 1 + random.below(min(block, 16))
            case 3:  // large
                length = 1 + random.below(EraDevice.largestWrite.rawValue)
                offset = random.below(total)
            case 4:  // the device's last sectors (inside a partial last block where there is one)
                length = 1 + random.below(8)
                offset = total - min(length, total)
            default:  // the first block
                length = 1 + random.below(8)
                offset = 0
            }
            offset = min(offset, total - 1)
            length = min(length, total - offset, EraDevice.largestWrite.rawValue)
            return Write(offset: Sectors(offset), length: Sectors(length))
        }
    }

    /// What the scenario wrote: the last era each block was written in.
    struct EraModel {
        var blockSize: Sectors
        var era: UInt32 = 0
        var lastWritten: [UInt64: UInt32] = [:]

        mutating func record(_ write: Write) {
            let first = write.offset.rawValue / blockSize.rawValue
            let last = (write.offset.rawValue + write.length.rawValue - 1) / blockSize.rawValue
            for block in first...last { lastWritten[block] = era }
        }

        /// What `era_invalidate --written-since since` should print: every block for era 0 (the era
        /// array holds 0 for blocks never written, and 0 >= 0), else the blocks last written in an
        /// era at or after `since`.
        func blocks(since: UInt32, count: UInt64) -> Set<UInt64> {
            since == 0 ? Set(0..<count) : Set(lastWritten.filter { $0.value >= since }.keys)
        }
    }

    /// A small, fast, seedable generator (SplitMix64), so that a failing run can be repeated.
    struct SplitMix64: RandomNumberGenerator {
        var state: UInt64
        init(seed: UInt64) { state = seed }

        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }

        /// A number in 0..<bound (bound > 0).
        mutating func below(_ bound: UInt64) -> UInt64 { next() % bound }
    }
}
