from aegisd.app.main import main

main()
