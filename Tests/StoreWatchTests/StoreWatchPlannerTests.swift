import BlockIO
import Snapstack
@testable import SnapstackDaemon
import Testing

private let mib = Bytes.mebibytes(1)

/// A live snapshot of a 64 MiB origin with 4 KiB chunks.
private func store(_ name: String = "data-s", id: String = "aaaa0001", allocated: Bytes, total: Bytes,
                   file: Bool = true, condition: StoreUsage.Condition? = nil, marked: Bool = false) -> StoreUsage {
    StoreUsage(name: name, snapshotID: id, origin: "data", originSize: .mebibytes(64), storeIsGrowable: file,
               storePath: file ? "/var/lib/snapstack/stores/x.cow" : "/dev/vdc", storeSize: total, chunk: .kibibytes(4),
               condition: condition ?? .active(allocated: allocated, total: total, metadata: .kibibytes(8)), markedInvalid: marked)
}

private func settings(enabled: Bool = true, threshold: Double = 0.8, step: Bytes? = nil, limit: Bytes? = nil,
                      interval: Duration = .seconds(5)) -> StoreWatchSettings {
    StoreWatchSettings(enabled: enabled, threshold: threshold, step: step, limit: limit, pollInterval: interval)
}

@Test func defaultsAreTheDocumentedOnes() {
    let defaults = StoreWatchSettings()
    #expect(defaults == StoreWatchSettings(enabled: true, threshold: 0.8, step: nil, limit: nil, pollInterval: .seconds(5)))
}

@Test func belowTheThresholdNothingHappensUntilTheNextPoll() {
    var planner = StoreWatchPlanner(settings: settings())
    let (actions, wait) = planner.plan([store(allocated: mib, total: .mebibytes(4))], at: .zero)
    #expect(actions.isEmpty)
    #expect(wait == .seconds(5))
}

@Test func pastTheThresholdAFileStoreDoubles() {
    var planner = StoreWatchPlanner(settings: settings())
    let (actions, _) = planner.plan([store(allocated: .mebibytes(7), total: .mebibytes(8))], at: .zero)
    #expect(actions == [.grow(snapshot: "data-s", to: .mebibytes(16), used: 7.0 / 8)])
}

@Test func aStepGrowsByThatMuchButAlwaysBackUnderTheThreshold() {
    var planner = StoreWatchPlanner(settings: settings(step: .mebibytes(2)))
    #expect(planner.plan([store(allocated: .mebibytes(7), total: .mebibytes(8))], at: .zero).actions
        == [.grow(snapshot: "data-s", to: .mebibytes(10), used: 7.0 / 8)])
    // A step too small to get under 80% again is stretched: 9.5 MiB used needs 11.875 MiB.
    var small = StoreWatchPlanner(settings: settings(step: .kibibytes(512)))
    guard case .grow(_, let target, _)? = small.plan([store(allocated: Bytes(9_961_472), total: .mebibytes(10))], at: .zero).actions.first
    else { Issue.record("no growth"); return }
    #expect(target.rawValue >= UInt64(Double(9_961_472) / 0.8))
}

@Test func theLimitCapsTheGrowthThenOnlyWarnsOncePerSize() {
    var planner = StoreWatchPlanner(settings: settings(limit: .mebibytes(12)))
    #expect(planner.plan([store(allocated: .mebibytes(7), total: .mebibytes(8))], at: .zero).actions
        == [.grow(snapshot: "data-s", to: .mebibytes(12), used: 7.0 / 8)])
    let atLimit = store(allocated: .mebibytes(11), total: .mebibytes(12))
    let first = planner.plan([atLimit], at: .seconds(5)).actions
    guard case .warn(let name, let message)? = first.first, first.count == 1 else { Issue.record("expected a warning: \(first)"); return }
    #expect(name == "data-s")
    #expect(message.contains("at its limit (12582912 bytes)") && message.contains("may overflow"))
    #expect(planner.plan([atLimit], at: .seconds(10)).actions.isEmpty)
}

@Test func noLimitMeansAsLargeAsTheOriginCanFill() {
    // 64 MiB of 4 KiB chunks: 16384 data chunks, 64 metadata chunks, the header and the next area's.
    #expect(Orchestrator.largestUsefulStore(origin: .mebibytes(64), chunk: .kibibytes(4)) == Bytes(16450 * 4096))
    var planner = StoreWatchPlanner(settings: settings())
    let (actions, _) = planner.plan([store(allocated: .mebibytes(60), total: .mebibytes(64))], at: .zero)
    #expect(actions == [.grow(snapshot: "data-s", to: Bytes(16450 * 4096), used: 60.0 / 64)])
}

@Test func withGrowthOffOrOnADeviceStoreItWarns() {
    var off = StoreWatchPlanner(settings: settings(enabled: false))
    guard case .warn(_, let message)? = off.plan([store(allocated: .mebibytes(7), total: .mebibytes(8))], at: .zero).actions.first
    else { Issue.record("no warning"); return }
    #expect(message.contains("store growth is off"))
    var device = StoreWatchPlanner(settings: settings())
    guard case .warn(_, let deviceMessage)? = device.plan([store(allocated: .mebibytes(7), total: .mebibytes(8), file: false)], at: .zero).actions.first
    else { Issue.record("no warning"); return }
    #expect(deviceMessage.contains("block device /dev/vdc"))
}

@Test func invalidatedSnapshotsAreDroppedEvenWithGrowthOff() {
    var planner = StoreWatchPlanner(settings: settings(enabled: false))
    let actions = planner.plan([
        store("a-s", id: "1", allocated: .zero, total: .zero, condition: .invalid),
        store("b-s", id: "2", allocated: .zero, total: .zero, condition: .overflow),
        store("c-s", id: "3", allocated: .zero, total: .zero, condition: .missing, marked: true),
        store("d-s", id: "4", allocated: .zero, total: .zero, condition: .missing),
        store("e-s", id: "5", allocated: .zero, total: .zero, condition: .unknown),
    ], at: .zero).actions
    #expect(actions.map { if case .drop(let name, _) = $0 { name } else { "?" } } == ["a-s", "b-s", "c-s"])
}

@Test func aFillingStoreIsLookedAtSoonerAndGrownBeforeItPassesTheThreshold() {
    var planner = StoreWatchPlanner(settings: settings(threshold: 0.5, interval: .seconds(10)))
    let total = Bytes.mebibytes(16)
    _ = planner.plan([store(allocated: .zero, total: total)], at: .zero)
    // 1 MiB/s, 4 MiB to go to 8 MiB: look again in 2 s, halfway.
    let (actions, wait) = planner.plan([store(allocated: .mebibytes(4), total: total)], at: .seconds(4))
    #expect(actions.isEmpty)
    #expect(wait == .seconds(2))
    // 0.3 s from the threshold at this rate: closer than two of the shortest waits, grow now.
    let (soon, _) = planner.plan([store(allocated: Bytes(8_074_035), total: total)], at: .milliseconds(7_700))
    guard case .grow(_, let target, _)? = soon.first else { Issue.record("no early growth: \(soon)"); return }
    #expect(target >= .mebibytes(32))
}

@Test func aFastFillShortensTheWaitToHalfTheTimeToTheThreshold() {
    var planner = StoreWatchPlanner(settings: settings(threshold: 0.9, interval: .seconds(10)))
    let total = Bytes.mebibytes(16)
    _ = planner.plan([store(allocated: .zero, total: total)], at: .zero)
    // 8 MiB/s, 6.4 MiB short of 90%: 0.8 s away, looked at again in 0.4 s.
    let (actions, wait) = planner.plan([store(allocated: .mebibytes(8), total: total)], at: .seconds(1))
    #expect(actions.isEmpty)
    #expect(abs(StoreWatchPlanner.seconds(wait) - 0.4) < 0.001)
    #expect(wait >= StoreWatchPlanner.minimumWait)
}

@Test func aFailureIsRecordedOnceUntilItChanges() {
    var planner = StoreWatchPlanner(settings: settings())
    let first = planner.failed("data-s", "no space")
    let repeated = planner.failed("data-s", "no space")
    let changed = planner.failed("data-s", "other")
    planner.succeeded("data-s")
    let afterSuccess = planner.failed("data-s", "other")
    #expect(first && !repeated && changed && afterSuccess)
}

@Test func aGrowthStepNearTwoToTheSixtyFourEndsAtTheLimitInsteadOfOverflowing() {
    // `grow-by: 18446744073709551615` is a valid size to the policy parser.
    var planner = StoreWatchPlanner(settings: settings(step: Bytes(.max), limit: .mebibytes(32)))
    #expect(planner.plan([store(allocated: .mebibytes(7), total: .mebibytes(8))], at: .zero).actions
        == [.grow(snapshot: "data-s", to: .mebibytes(32), used: 7.0 / 8)])
    // Doubling a store past 2^63 bytes saturates too.
    let huge = planner.growthTarget(allocated: Bytes(1 << 63), total: Bytes((1 << 63) + (1 << 62)), rate: 1e30, cap: Bytes(.max))
    #expect(huge == Bytes(.max))
}

@Test func whatIsRememberedOfASnapshotGoesWithIt() {
    var planner = StoreWatchPlanner(settings: settings(limit: .mebibytes(12)))
    // Thousands of snapshots, each warned about at its limit and failing once, then dropped.
    for round in 0..<1000 {
        let id = String(format: "%08x", round), name = "data-s\(round)"
        let atLimit = store(name, id: id, allocated: .mebibytes(11), total: .mebibytes(12))
        let actions = planner.plan([atLimit], at: .seconds(Int64(round))).actions
        #expect(actions.count == 1)
        let new = planner.failed(name, "cannot grow")
        #expect(new)
    }
    #expect(planner.rememberedSnapshots <= 3, "samples, a warning and a failure of the last snapshot only")
    _ = planner.plan([], at: .seconds(2000))
    #expect(planner.rememberedSnapshots == 0)
}
