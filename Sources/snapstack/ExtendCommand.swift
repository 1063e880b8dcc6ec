import ArgumentParser
import BlockIO
import Foundation
import Reports
import Snapstack

/// `--size` of `extend`: `4G` (to), `+2G` (by), `+50%` (by a share of the store), `25%` (to a
/// share of the origin).
struct StoreSizeChangeArgument: ExpressibleByArgument {
    var change: StoreSizeChange

    init?(argument: String) {
        let relative = argument.hasPrefix("+")
        let text = relative ? String(argument.dropFirst()) : argument
        if text.hasSuffix("%") {
            guard let percent = Double(text.dropLast()), percent.isFinite, percent > 0 else { return nil }
            change = relative ? .byPercent(percent) : .toPercentOfOrigin(percent)
        } else {
            guard let bytes = try? Bytes(parsing: text), bytes > .zero else { return nil }
            change = relative ? .by(bytes) : .to(bytes)
        }
    }
}

struct ExtendCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extend",
        abstract: "Grow a snapshot's COW store while the snapshot lives, before it fills up.",
        discussion: """
            While a snapshot lives, the first write to each chunk of its origin copies the old \
            chunk into the snapshot's store. When the store is full, the kernel invalidates the \
            snapshot (the origin's writes still go through, and its data is never at risk) and \
            the snapshot's content is lost. `snapstack snapshots -o +used_percent` shows how full \
            each store is; grow one in time with this command, or let `snapstack daemon` do it.

            The store file is grown and preallocated, and its loop device takes the new size; \
            the kernel uses the new space at once, without suspending anything. A request past \
            the largest store the origin can fill (its size plus the store's metadata) is cut \
            to that size. A store that is a block device (--store DEV) is grown by growing the \
            device itself (e.g. lvextend); snapstack refuses it. An invalidated snapshot cannot \
            be brought back: drop it.

            --size forms:
              4G      grow the store to 4 GiB
              +2G     grow it by 2 GiB
              +50%    grow it by half its current size
              25%     grow it to a quarter of the origin's size
            Sizes take the units of `snapshot --size` (s, k, m, g, t; binary).

            Examples:
              snapstack extend data-nightly --size +2G
              snapstack extend /dev/mapper/snapstack-data-nightly --size 50%

            Exit status: 0 grown; 5 no such snapshot; 6 refused (a device store, an invalid or \
            inactive snapshot); 64 a malformed size, or one that does not grow the store; \
            1 growing failed (e.g. no space on the store's file system; nothing changed, or \
            `snapstack reconcile` finishes it).
            """)

    @Argument(help: "The snapshot: NAME-SNAP or its device path.", completion: StateCompletion.snapshots)
    var snapshot: String

    @Option(help: ArgumentHelp("The new size: SIZE, +SIZE, +PCT% (of the store) or PCT% (of the origin).",
                               valueName: "size"))
    var size: StoreSizeChangeArgument

    @OptionGroup var global: GlobalOptions

    func run() throws {
        try changingDevices { _ in
            let result = try global.orchestrator().extend(snapshot: snapshot, size.change)
            var line = "snapstack: \(result.name): store grown from \(Self.human(result.previousSize)) to \(Self.human(result.size))"
            if result.limited { line += " (the most its origin can fill)" }
            Output.error(line)
        }
    }

    static func human(_ size: Bytes) -> String { Units.human.format(size) }
}
