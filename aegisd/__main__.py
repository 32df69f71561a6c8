from aegisd.app.daemon import main

main()
