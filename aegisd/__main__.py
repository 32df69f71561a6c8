from aegisd.daemon import main

main()
