import Testing
@testable import ChangeTracking
