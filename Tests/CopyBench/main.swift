print("copy bench placeholder")
